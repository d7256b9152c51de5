//! A simulator of the OpenAI Realtime API (GA protocol) over WebSocket.
//!
//! [`RealtimeSim::start`] listens on `127.0.0.1:0` and serves
//! `ws://127.0.0.1:PORT/v1/realtime?model=...` (or `?call_id=...`). It speaks
//! the GA wire shapes (`session.created`, `response.output_audio.delta`, ...),
//! validates what the client sends the way the real service does (error
//! events with the real codes and messages), runs an energy VAD on the
//! caller's audio, and streams synthetic speech-like audio for each response,
//! paced faster than real time as the real API does.
//!
//! Everything received is parsed as plain [`serde_json::Value`]: nothing is
//! shared with the bridge's own typed events.
//!
//! Function calls: [`RealtimeSimConfig::tool_calls`] scripts a function
//! call at the end of the n-th response (emitted only when the session
//! declares a function tool of that name, as a real model can only call
//! declared tools); `function_call_output` items must name a function call
//! of the conversation (`invalid_tool_call_id` otherwise).
//!
//! SIP: [`crate::sip::SipConnector`] runs this server with a SIP side: a
//! `?call_id=` upgrade then attaches a *sideband* to an accepted call: no
//! audio on the socket (audio flows over SIP), the caller's speech and DTMF
//! come from the call's script, and `output_audio_buffer.*` events mark the
//! playback of each response.
//!
//! One task per connection; the only shared mutable state is the event and
//! connection logs behind mutexes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::stamp::{RxStamp as _, StampedTcp};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::Rng as _;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// The path the real service serves the Realtime WebSocket on.
pub const REALTIME_PATH: &str = "/v1/realtime";

/// The model reported when the client did not pass `?model=`.
pub const DEFAULT_MODEL: &str = "gpt-realtime";

const DEFAULT_INSTRUCTIONS: &str = "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. \
Act like a human, but remember that you aren't a human and that you can't do human things in the real world. \
Your voice and personality should be warm and engaging, with a lively and playful tone.";

const SUPPORTED_CLIENT_EVENTS: &[&str] = &[
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.clear",
    "input_audio_buffer.commit",
    "output_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "response.create",
    "response.cancel",
];

// ---------------------------------------------------------------------------
// Public configuration and API
// ---------------------------------------------------------------------------

/// What one response of the simulated model says.
#[derive(Debug, Clone, PartialEq)]
pub struct SimReply {
    /// The transcript (`response.output_audio_transcript.*`).
    pub text: String,
    /// How much audio the response streams.
    pub audio_ms: u32,
}

impl SimReply {
    pub fn new(text: impl Into<String>, audio_ms: u32) -> Self {
        SimReply {
            text: text.into(),
            audio_ms,
        }
    }
}

/// A function call the simulated model makes at the end of a response
/// (see [`RealtimeSimConfig::tool_calls`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SimToolCall {
    /// The function's name; the call is only made when the session's
    /// `tools` declare a function of that name.
    pub name: String,
    /// The arguments. Any JSON value is sent serialized (`{"a":1}` ->
    /// `"{\"a\":1}"`); a JSON *string* is sent verbatim, which scripts
    /// malformed arguments (`json!("{not json")`).
    pub arguments: Value,
}

impl SimToolCall {
    pub fn new(name: impl Into<String>, arguments: Value) -> Self {
        SimToolCall {
            name: name.into(),
            arguments,
        }
    }

    /// The `arguments` string as sent on the wire.
    pub fn arguments_string(&self) -> String {
        match &self.arguments {
            Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }
}

/// A function call the simulated model made (see [`RealtimeSim::function_calls`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SimFunctionCall {
    pub conn: u64,
    /// The SIP call, for a sideband connection.
    pub sip_call_id: Option<String>,
    /// Which response of the connection (from 0).
    pub response_index: usize,
    pub response_id: String,
    pub item_id: String,
    /// The `call_id` a `function_call_output` must name.
    pub call_id: String,
    pub name: String,
    pub arguments: String,
}

/// A scripted function call that was not made because the session did not
/// allow it (see [`RealtimeSim::tool_call_misses`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SimToolCallMiss {
    pub conn: u64,
    pub sip_call_id: Option<String>,
    pub response_index: usize,
    pub name: String,
    /// E.g. `"no function tool named 'end_call' in session.tools (declared: [])"`.
    pub reason: String,
}

/// A `function_call_output` item the client created (see [`RealtimeSim::tool_outputs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SimToolOutput {
    pub conn: u64,
    pub sip_call_id: Option<String>,
    pub call_id: String,
    pub item_id: String,
    pub output: String,
}

/// Failure injection.
#[derive(Debug, Clone, Default)]
pub struct SimFaults {
    /// `session.updated` (and the effective session, hence the audio sent)
    /// uses this `audio.output.format` whatever the client asked for,
    /// e.g. `{"type":"audio/pcm","rate":24000}`.
    pub force_output_format: Option<Value>,
    /// The server closes the socket (code 1011) this long after connect.
    pub close_after_ms: Option<u64>,
    /// The server sends a fatal `server_error` event this long after
    /// connect, then closes (code 1011).
    pub error_after_ms: Option<u64>,
    /// Delay before the WebSocket upgrade is answered.
    pub connect_delay_ms: u64,
}

/// Configuration of a [`RealtimeSim`].
#[derive(Debug, Clone)]
pub struct RealtimeSimConfig {
    /// Expected `Authorization: Bearer <key>`; `None` accepts anything.
    /// A missing or wrong key gets HTTP 401 on the upgrade.
    pub api_key: Option<String>,
    /// Transcript for the n-th committed user turn of a connection (the
    /// last one repeats; empty means `"(inaudible)"`). Only reported when
    /// the session has input transcription configured.
    pub caller_transcripts: Vec<String>,
    /// The n-th response of a connection speaks `replies[n]` (the last one
    /// repeats).
    pub replies: Vec<SimReply>,
    /// Response n (from 0, per connection) ends with this function call,
    /// after speaking `replies[n]`. A reply with empty text and 0 ms makes a
    /// response with the function call as its only output item. Not
    /// repeated: only the listed responses call a function. Empty by
    /// default; see [`RealtimeSimConfig::with_tool_call`].
    pub tool_calls: BTreeMap<usize, SimToolCall>,
    /// Audio per `response.output_audio.delta`, in ms (default 100).
    pub delta_ms: u32,
    /// Audio is streamed at `speed` x real time (default 4.0; the real API
    /// streams faster than real time). 0 = no pacing at all.
    pub speed: f64,
    /// Simulated model latency before the first audio delta (default 150).
    pub first_delta_delay_ms: u64,
    /// RMS (linear 16-bit) above which a 20 ms input frame is speech, at
    /// the default `threshold` 0.5 (it scales linearly with the session's
    /// `turn_detection.threshold`). Default 800.
    pub vad_rms: f64,
    /// Append every client event as JSONL
    /// `{"conn":n,"t_ms":ms_since_conn_open,"event":{..}}`.
    pub record_path: Option<PathBuf>,
    /// Keep every client event in memory for [`RealtimeSim::events`]
    /// (default true). Turn off for long load runs.
    pub keep_events: bool,
    /// Failure injection.
    pub faults: SimFaults,
    /// Load-test metrics sink (see [`probe`]). When set, tagged appends are
    /// measured, and the first delta of each response carries a downlink tag.
    pub probe: Option<probe::Probe>,
    /// Measure an append's arrival by the kernel's receive timestamp of its bytes
    /// (see [`crate::stamp`]) instead of the time this simulator got to it. Off by
    /// default.
    pub kernel_rx_stamps: bool,
}

impl Default for RealtimeSimConfig {
    fn default() -> Self {
        RealtimeSimConfig {
            api_key: None,
            caller_transcripts: vec![
                "Hi, I'd like to book an appointment.".to_string(),
                "Tuesday morning works for me.".to_string(),
                "No, that's all. Thank you.".to_string(),
            ],
            replies: vec![
                SimReply::new(
                    "Hello! This is the voxbridge test assistant. How can I help you today?",
                    3_000,
                ),
                SimReply::new(
                    "Sure, I can help with that. Which day would suit you best?",
                    2_500,
                ),
                SimReply::new(
                    "Great, you're booked for Tuesday at ten in the morning. Anything else?",
                    3_000,
                ),
                SimReply::new("You're welcome. Have a nice day, goodbye!", 1_800),
            ],
            tool_calls: BTreeMap::new(),
            delta_ms: 100,
            speed: 4.0,
            first_delta_delay_ms: 150,
            vad_rms: 800.0,
            record_path: None,
            keep_events: true,
            faults: SimFaults::default(),
            probe: None,
            kernel_rx_stamps: false,
        }
    }
}

impl RealtimeSimConfig {
    /// Script a function call at the end of response `response` (from 0).
    pub fn with_tool_call(
        mut self,
        response: usize,
        name: impl Into<String>,
        arguments: Value,
    ) -> Self {
        self.tool_calls
            .insert(response, SimToolCall::new(name, arguments));
        self
    }
}

/// One accepted WebSocket connection.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConnInfo {
    /// Connection number, from 0, in order of accepted upgrades.
    pub conn: u64,
    /// The `model` query parameter, if any.
    pub model: Option<String>,
    /// The `call_id` query parameter (SIP sideband), if any.
    pub call_id: Option<String>,
    /// Whether the retired beta shape (`OpenAI-Beta` header) was used.
    pub beta: bool,
    pub opened_at: Instant,
    pub closed_at: Option<Instant>,
    /// Why it closed, e.g. `"client closed (1000)"`, `"fault: close_after_ms"`.
    pub close_reason: Option<String>,
}

/// Live notices, for tests.
#[derive(Debug, Clone, PartialEq)]
pub enum SimNotice {
    Connected {
        conn: u64,
    },
    Closed {
        conn: u64,
    },
    TruncateAccepted {
        conn: u64,
        item_id: String,
        audio_end_ms: u64,
    },
    TruncateRejected {
        conn: u64,
        item_id: String,
        message: String,
    },
    ResponseCancelled {
        conn: u64,
        response_id: String,
    },
    ClientEvent {
        conn: u64,
        event_type: String,
    },
    /// The model called a function (`response.output_item.done` sent).
    FunctionCall {
        conn: u64,
        call_id: String,
        name: String,
    },
    /// A scripted function call was not made (see [`SimToolCallMiss`]).
    ToolCallMissed {
        conn: u64,
        name: String,
    },
    /// The client sent a valid `function_call_output`.
    ToolOutput {
        conn: u64,
        call_id: String,
    },
}

struct Shared {
    cfg: RealtimeSimConfig,
    events: Mutex<Vec<Value>>,
    conns: Mutex<Vec<SimConnInfo>>,
    notices: broadcast::Sender<SimNotice>,
    record: Option<Mutex<std::fs::File>>,
    next_conn: AtomicU64,
    tools: Mutex<ToolLog>,
    /// The SIP connector's side, when run by [`crate::sip::SipConnector`].
    sip: Option<Arc<dyn SidebandHost>>,
}

#[derive(Default)]
struct ToolLog {
    calls: Vec<SimFunctionCall>,
    misses: Vec<SimToolCallMiss>,
    outputs: Vec<SimToolOutput>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn notify(&self, n: SimNotice) {
        // No receiver is fine.
        let _ = self.notices.send(n);
    }

    fn record(&self, conn: u64, opened: Instant, event: &Value) {
        if self.cfg.keep_events {
            lock(&self.events).push(event.clone());
        }
        if let Some(file) = &self.record {
            let line = json!({
                "conn": conn,
                "t_ms": opened.elapsed().as_millis() as u64,
                "event": event,
            });
            let mut s = line.to_string();
            s.push('\n');
            if let Err(e) = lock(file).write_all(s.as_bytes()) {
                tracing::warn!(error = %e, "realtime sim: cannot write the record file");
            }
        }
    }

    fn set_closed(&self, conn: u64, reason: String) {
        let mut conns = lock(&self.conns);
        if let Some(c) = conns.iter_mut().find(|c| c.conn == conn)
            && c.closed_at.is_none()
        {
            c.closed_at = Some(Instant::now());
            c.close_reason = Some(reason);
        }
    }
}

/// A running simulator. Dropping it stops the server too (without waiting).
pub struct RealtimeSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    acceptor: tokio::task::JoinHandle<()>,
    http: Option<tokio::task::JoinHandle<()>>,
}

impl RealtimeSim {
    /// Bind `127.0.0.1:0` and start serving.
    pub async fn start(cfg: RealtimeSimConfig) -> std::io::Result<RealtimeSim> {
        Self::start_on("127.0.0.1:0", cfg).await
    }

    /// Bind `addr` (e.g. `127.0.0.1:9100`, for a separately started server
    /// whose `OPENAI_REALTIME_URL` points there) and start serving.
    pub async fn start_on(
        addr: impl tokio::net::ToSocketAddrs,
        cfg: RealtimeSimConfig,
    ) -> std::io::Result<RealtimeSim> {
        Self::start_inner(addr, cfg, None).await
    }

    /// Start with a SIP side: `?call_id=` upgrades attach to `host`'s calls,
    /// and every request that is not a `GET /v1/realtime` upgrade is served
    /// by `http` (the Calls REST API) on the same port.
    pub(crate) async fn start_with_sip(
        addr: impl tokio::net::ToSocketAddrs,
        cfg: RealtimeSimConfig,
        host: Arc<dyn SidebandHost>,
        http: axum::Router,
    ) -> std::io::Result<RealtimeSim> {
        Self::start_inner(addr, cfg, Some((host, http))).await
    }

    async fn start_inner(
        addr: impl tokio::net::ToSocketAddrs,
        cfg: RealtimeSimConfig,
        sip: Option<(Arc<dyn SidebandHost>, axum::Router)>,
    ) -> std::io::Result<RealtimeSim> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let record = match &cfg.record_path {
            Some(p) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            )),
            None => None,
        };
        let (notices, _) = broadcast::channel(4096);
        let (host, router) = match sip {
            Some((h, r)) => (Some(h), Some(r)),
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            cfg,
            events: Mutex::new(Vec::new()),
            conns: Mutex::new(Vec::new()),
            notices,
            record,
            next_conn: AtomicU64::new(0),
            tools: Mutex::new(ToolLog::default()),
            sip: host,
        });
        let (stop, stop_rx) = watch::channel(false);
        let (http, http_tx) = match router {
            Some(router) => {
                let (tx, rx) = mpsc::channel(64);
                let listener = ChanListener { rx, addr };
                let mut stop_http = stop_rx.clone();
                let task = tokio::spawn(async move {
                    let _ = axum::serve(listener, router)
                        .with_graceful_shutdown(async move {
                            let _ = stop_http.wait_for(|s| *s).await;
                        })
                        .await;
                });
                (Some(task), Some(tx))
            }
            None => (None, None),
        };
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone(), stop_rx, http_tx));
        Ok(RealtimeSim {
            addr,
            shared,
            stop,
            acceptor,
            http,
        })
    }

    /// `ws://127.0.0.1:PORT/v1/realtime` (add `?model=...`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, REALTIME_PATH)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every client event received (all connections, arrival order).
    pub fn events(&self) -> Vec<Value> {
        lock(&self.shared.events).clone()
    }

    /// The client events of one connection whose `type` is `event_type`
    /// (convenience for tests). Needs `keep_events`.
    pub fn events_of_type(&self, event_type: &str) -> Vec<Value> {
        lock(&self.shared.events)
            .iter()
            .filter(|e| e.get("type").and_then(Value::as_str) == Some(event_type))
            .cloned()
            .collect()
    }

    /// Per accepted connection: model, times, close reason.
    pub fn connections(&self) -> Vec<SimConnInfo> {
        lock(&self.shared.conns).clone()
    }

    /// Every function call the model made (all connections, in order).
    pub fn function_calls(&self) -> Vec<SimFunctionCall> {
        lock(&self.shared.tools).calls.clone()
    }

    /// Scripted function calls that were not made (tool not declared, or
    /// `tool_choice: "none"`).
    pub fn tool_call_misses(&self) -> Vec<SimToolCallMiss> {
        lock(&self.shared.tools).misses.clone()
    }

    /// Every accepted `function_call_output` item (all connections, in order).
    pub fn tool_outputs(&self) -> Vec<SimToolOutput> {
        lock(&self.shared.tools).outputs.clone()
    }

    /// Live notices from now on.
    pub fn notices(&self) -> broadcast::Receiver<SimNotice> {
        self.shared.notices.subscribe()
    }

    /// Close every connection (code 1001) and stop listening.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.acceptor.await;
        if let Some(mut http) = self.http
            && tokio::time::timeout(Duration::from_secs(2), &mut http)
                .await
                .is_err()
        {
            http.abort();
        }
    }
}

// ---------------------------------------------------------------------------
// The SIP side (crate-private; see `crate::sip`)
// ---------------------------------------------------------------------------

/// What the SIP connector provides to sideband connections.
pub(crate) trait SidebandHost: Send + Sync + 'static {
    /// A `?call_id=` upgrade: the call's session and command channel, or the
    /// HTTP refusal (status, OpenAI error JSON).
    fn attach(&self, call_id: &str) -> Result<SidebandAttach, (StatusCode, Value)>;
    /// The sideband connection `token` closed.
    fn detached(&self, call_id: &str, token: u64);
    /// A client event received on a sideband connection.
    fn client_event(&self, call_id: &str, ev: &Value);
    /// A server event sent on a sideband connection.
    fn server_event(&self, call_id: &str, ev: &Value);
}

/// A sideband connection's link to its call.
pub(crate) struct SidebandAttach {
    pub call_id: String,
    pub token: u64,
    /// The effective session (from the accept body).
    pub session: Value,
    pub cmds: mpsc::UnboundedReceiver<SidebandCmd>,
    pub progress: Arc<watch::Sender<CallProgress>>,
}

/// What the simulated caller (the SIP leg) does, sent to sideband connections.
#[derive(Debug, Clone)]
pub(crate) enum SidebandCmd {
    /// The caller starts talking.
    SpeechStarted,
    /// The caller stops talking; the turn's transcript.
    SpeechStopped { transcript: String },
    /// A keypad press.
    Dtmf { digit: String },
    /// The call is over: close the socket (code 1000) with this reason.
    End { reason: &'static str },
}

/// Per-call progress, for the caller script's waits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CallProgress {
    /// Sideband upgrades accepted so far.
    pub attaches: u32,
    /// Responses finished (completed or cancelled), all sidebands.
    pub responses_done: u64,
    /// Responses in progress, all sidebands.
    pub responses_active: u32,
}

/// Feeds the HTTP connections the acceptor classified as non-WebSocket to
/// `axum::serve`.
struct ChanListener {
    rx: mpsc::Receiver<TcpStream>,
    addr: SocketAddr,
}

impl axum::serve::Listener for ChanListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.rx.recv().await {
                Some(s) => {
                    let peer = s.peer_addr().unwrap_or(self.addr);
                    return (s, peer);
                }
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Whether a new connection starts with `GET /v1/realtime` (then `?` or a
/// space): the Realtime WebSocket, as opposed to a REST request.
async fn wants_websocket(stream: &TcpStream) -> bool {
    const WS: &[u8] = b"GET /v1/realtime";
    let mut buf = [0u8; 17];
    let give_up = Instant::now() + Duration::from_secs(10);
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        let k = n.min(WS.len());
        if buf[..k] != WS[..k] {
            return false;
        }
        if n > WS.len() {
            return matches!(buf[WS.len()], b'?' | b' ');
        }
        if Instant::now() > give_up {
            return false;
        }
        // `peek` returns at once while the request line is incomplete.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The OpenAI error body of a failed bearer check, if any.
pub(crate) fn check_bearer(authorization: Option<&str>, expected: Option<&str>) -> Option<Value> {
    let expected = expected?;
    match authorization {
        None => Some(
            json!({"error": {"message": "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if you're accessing the API from your browser and are prompted for a username and password. You can obtain an API key from https://platform.openai.com/account/api-keys.",
            "type": "invalid_request_error", "param": null, "code": null}}),
        ),
        Some(v) => {
            let key = v.strip_prefix("Bearer ").unwrap_or("");
            if key == expected {
                return None;
            }
            let shown: String = if key.len() > 8 {
                format!("{}*****", key.chars().take(3).collect::<String>())
            } else {
                "*****".to_string()
            };
            Some(
                json!({"error": {"message": format!("Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."),
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}),
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Accepting
// ---------------------------------------------------------------------------

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    http: Option<mpsc::Sender<TcpStream>>,
) {
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            acc = listener.accept() => match acc {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    match &http {
                        None => {
                            tasks.spawn(handle_socket(stream, shared.clone(), stop.clone()));
                        }
                        Some(http) => {
                            let (http, shared, stop) = (http.clone(), shared.clone(), stop.clone());
                            tasks.spawn(async move {
                                if wants_websocket(&stream).await {
                                    handle_socket(stream, shared, stop).await;
                                } else {
                                    let _ = http.send(stream).await;
                                }
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "realtime sim: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
    drop(listener);
    // Connections see the stop signal and close; give them a moment.
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

#[derive(Default)]
struct Handshake {
    model: Option<String>,
    call_id: Option<String>,
    beta: bool,
    sideband: Option<SidebandAttach>,
}

fn http_error(status: StatusCode, body: Value) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

// The error type is tungstenite's handshake rejection, used as is.
#[allow(clippy::result_large_err)]
fn check_upgrade(
    req: &Request,
    api_key: Option<&str>,
    sip: Option<&dyn SidebandHost>,
    hs: &mut Handshake,
) -> Result<(), ErrorResponse> {
    if req.uri().path() != REALTIME_PATH {
        return Err(http_error(
            StatusCode::NOT_FOUND,
            json!({"error": {"message": format!("Invalid URL (GET {})", req.uri().path()),
                "type": "invalid_request_error", "param": null, "code": null}}),
        ));
    }
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(body) = check_bearer(auth, api_key) {
        return Err(http_error(StatusCode::UNAUTHORIZED, body));
    }
    if let Some(q) = req.uri().query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            match &*k {
                "model" => hs.model = Some(v.into_owned()),
                "call_id" => hs.call_id = Some(v.into_owned()),
                _ => {}
            }
        }
    }
    hs.beta = req.headers().contains_key("openai-beta");
    if let (Some(sip), Some(call_id), false) = (sip, hs.call_id.as_deref(), hs.beta) {
        match sip.attach(call_id) {
            Ok(a) => hs.sideband = Some(a),
            Err((status, body)) => return Err(http_error(status, body)),
        }
    }
    Ok(())
}

#[allow(clippy::result_large_err)] // tungstenite's `Callback` signature
async fn handle_socket(stream: TcpStream, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let delay = shared.cfg.faults.connect_delay_ms;
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut hs = Handshake::default();
    let api_key = shared.cfg.api_key.clone();
    let sip = shared.sip.clone();
    let cb = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        check_upgrade(req, api_key.as_deref(), sip.as_deref(), &mut hs).map(|()| resp)
    };
    let stream = StampedTcp::new(stream, shared.cfg.kernel_rx_stamps);
    let ws = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(crate::ws_config())),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "realtime sim: upgrade refused or failed");
            return;
        }
        Err(_) => return,
    };
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let opened = Instant::now();
    lock(&shared.conns).push(SimConnInfo {
        conn,
        model: hs.model.clone(),
        call_id: hs.call_id.clone(),
        beta: hs.beta,
        opened_at: opened,
        closed_at: None,
        close_reason: None,
    });
    shared.notify(SimNotice::Connected { conn });
    let reason = if hs.beta {
        reject_beta(ws, &shared, conn).await
    } else {
        let c = Conn::new(conn, opened, shared.clone(), &mut hs);
        c.run(ws, stop).await
    };
    shared.set_closed(conn, reason);
    shared.notify(SimNotice::Closed { conn });
}

async fn reject_beta(mut ws: WebSocketStream<StampedTcp>, shared: &Shared, conn: u64) -> String {
    let ev = json!({
        "type": "error",
        "event_id": new_id("event_"),
        "error": {
            "type": "invalid_request_error",
            "code": "beta_api_shape_disabled",
            "message": "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API.",
            "param": null,
            "event_id": null,
        }
    });
    let _ = ws.send(Message::text(ev.to_string())).await;
    shared.set_closed(conn, "beta_api_shape_disabled".to_string());
    close_ws(ws, 4000, "beta_api_shape_disabled").await;
    "beta_api_shape_disabled".to_string()
}

/// Send a close frame, then wait (briefly) for the client's close.
async fn close_ws(mut ws: WebSocketStream<StampedTcp>, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    if ws.send(Message::Close(Some(frame))).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

// ---------------------------------------------------------------------------
// Ids, audio formats, synthetic speech
// ---------------------------------------------------------------------------

pub(crate) fn new_id(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut s = String::with_capacity(prefix.len() + 21);
    s.push_str(prefix);
    s.extend(
        (&mut rng)
            .sample_iter(rand::distr::Alphanumeric)
            .take(21)
            .map(char::from),
    );
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Pcmu,
    Pcma,
    Pcm24,
}

impl Fmt {
    fn of(format: Option<&Value>) -> Fmt {
        match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
            Some("audio/pcmu") => Fmt::Pcmu,
            Some("audio/pcma") => Fmt::Pcma,
            _ => Fmt::Pcm24,
        }
    }
    fn bytes_per_ms(self) -> usize {
        match self {
            Fmt::Pcmu | Fmt::Pcma => 8,
            Fmt::Pcm24 => 48,
        }
    }
    /// Linear RMS of one frame in this format.
    fn rms(self, frame: &[u8]) -> f64 {
        match self {
            Fmt::Pcmu => voxbridge_audio::mulaw_rms(frame),
            Fmt::Pcma => rms_iter(frame.iter().map(|&b| voxbridge_audio::alaw_decode(b))),
            Fmt::Pcm24 => rms_iter(
                frame
                    .chunks_exact(2)
                    .map(|c| i16::from_le_bytes([c[0], c[1]])),
            ),
        }
    }
}

fn rms_iter(samples: impl Iterator<Item = i16>) -> f64 {
    let mut n = 0usize;
    let mut sum = 0f64;
    for s in samples {
        let s = f64::from(s);
        sum += s * s;
        n += 1;
    }
    if n == 0 { 0.0 } else { (sum / n as f64).sqrt() }
}

/// Two seconds of speech-like audio, pre-encoded in each output format.
struct Voice {
    pcm24: Vec<u8>, // 24 kHz PCM16 LE, 48 bytes/ms
    mulaw: Vec<u8>, // 8 kHz µ-law, 8 bytes/ms
    alaw: Vec<u8>,  // 8 kHz A-law
}

const VOICE_MS: usize = 2_000;

fn voice() -> &'static Voice {
    static V: OnceLock<Voice> = OnceLock::new();
    V.get_or_init(|| {
        use std::f64::consts::PI;
        let n = VOICE_MS * 24;
        let mut samples = Vec::with_capacity(n);
        let mut phase = 0f64;
        for i in 0..n {
            let t = i as f64 / 24_000.0;
            // Pitch contour 150..250 Hz (whole cycles over the loop).
            let f0 = 195.0 + 35.0 * (2.0 * PI * 0.5 * t).sin() + 15.0 * (2.0 * PI * 1.5 * t).sin();
            phase += 2.0 * PI * f0 / 24_000.0;
            let voiced = (phase.sin()
                + 0.6 * (2.0 * phase).sin()
                + 0.4 * (3.0 * phase).sin()
                + 0.25 * (4.0 * phase).sin()
                + 0.15 * (5.0 * phase).sin())
                / 2.4;
            // Four syllables a second; never fully silent.
            let env = 0.35 + 0.65 * (PI * 4.0 * t).sin().powi(2);
            samples.push((voiced * env * 14_000.0).clamp(-32_000.0, 32_000.0) as i16);
        }
        let pcm24 = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mulaw = samples
            .iter()
            .step_by(3)
            .map(|&s| voxbridge_audio::mulaw_encode(s))
            .collect();
        let alaw = samples
            .iter()
            .step_by(3)
            .map(|&s| voxbridge_audio::alaw_encode(s))
            .collect();
        Voice { pcm24, mulaw, alaw }
    })
}

/// `ms` of synthetic speech starting `pos_ms` into the voice loop.
fn voice_chunk(fmt: Fmt, pos_ms: u64, ms: u32) -> Vec<u8> {
    let src: &[u8] = match fmt {
        Fmt::Pcmu => &voice().mulaw,
        Fmt::Pcma => &voice().alaw,
        Fmt::Pcm24 => &voice().pcm24,
    };
    let bpm = fmt.bytes_per_ms();
    let len = ms as usize * bpm;
    let mut out = Vec::with_capacity(len);
    let mut at = (pos_ms as usize % VOICE_MS) * bpm;
    while out.len() < len {
        let take = (len - out.len()).min(src.len() - at);
        out.extend_from_slice(&src[at..at + take]);
        at = (at + take) % src.len();
    }
    out
}

// ---------------------------------------------------------------------------
// Session
// ---------------------------------------------------------------------------

fn server_vad_default() -> Value {
    json!({"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
        "silence_duration_ms": 500, "idle_timeout_ms": null,
        "create_response": true, "interrupt_response": true})
}

pub(crate) fn default_session(model: &str) -> Value {
    let expires = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3_600;
    json!({
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess_"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": null,
        "truncation": "auto",
        "prompt": null,
        "expires_at": expires,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": null,
                "noise_reduction": null,
                "turn_detection": server_vad_default(),
            },
            "output": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "voice": "alloy",
                "speed": 1.0,
            },
        },
        "include": null,
    })
}

/// An error to report as an `error` event (or a 400 body).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) code: &'static str,
    pub(crate) message: String,
    pub(crate) param: Option<String>,
}

impl ApiError {
    pub(crate) fn new(code: &'static str, message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            code,
            message: message.into(),
            param: param.map(str::to_string),
        }
    }
    pub(crate) fn missing(param: &str) -> Self {
        Self::new(
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
            Some(param),
        )
    }
    pub(crate) fn unknown(param: &str) -> Self {
        Self::new(
            "unknown_parameter",
            format!("Unknown parameter: '{param}'."),
            Some(param),
        )
    }
    pub(crate) fn invalid_type(param: &str, expected: &str, got: &Value) -> Self {
        Self::new(
            "invalid_type",
            format!(
                "Invalid type for '{param}': expected {expected}, but got {} instead.",
                json_kind(got)
            ),
            Some(param),
        )
    }
    fn invalid_value(param: &str, got: &Value, supported: &[&str]) -> Self {
        let shown = match got {
            Value::String(s) => format!("'{s}'"),
            other => other.to_string(),
        };
        Self::new(
            "invalid_value",
            format!(
                "Invalid value: {shown}. Supported values are: {}.",
                list_values(supported)
            ),
            Some(param),
        )
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a decimal",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn list_values(v: &[&str]) -> String {
    let quoted: Vec<String> = v.iter().map(|s| format!("'{s}'")).collect();
    match quoted.len() {
        0 => String::new(),
        1 => quoted[0].clone(),
        2 => format!("{} and {}", quoted[0], quoted[1]),
        n => format!("{}, and {}", quoted[..n - 1].join(", "), quoted[n - 1]),
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], path: &str) -> Result<(), ApiError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            return Err(ApiError::unknown(&p));
        }
    }
    Ok(())
}

fn as_obj<'a>(v: &'a Value, param: &str) -> Result<&'a Map<String, Value>, ApiError> {
    v.as_object()
        .ok_or_else(|| ApiError::invalid_type(param, "an object", v))
}

fn validate_format(v: &Value, path: &str) -> Result<Value, ApiError> {
    let o = as_obj(v, path)?;
    let tpath = format!("{path}.type");
    let t = o.get("type").ok_or_else(|| ApiError::missing(&tpath))?;
    let ts = t
        .as_str()
        .ok_or_else(|| ApiError::invalid_type(&tpath, "a string", t))?;
    match ts {
        "audio/pcmu" | "audio/pcma" => Ok(json!({"type": ts})),
        "audio/pcm" => {
            let rpath = format!("{path}.rate");
            let r = o.get("rate").ok_or_else(|| ApiError::missing(&rpath))?;
            if r.as_u64() != Some(24_000) && r.as_f64() != Some(24_000.0) {
                return Err(ApiError::invalid_value(&rpath, r, &["24000"]));
            }
            Ok(json!({"type": "audio/pcm", "rate": 24000}))
        }
        _ => Err(ApiError::invalid_value(
            &tpath,
            t,
            &["audio/pcm", "audio/pcmu", "audio/pcma"],
        )),
    }
}

fn validate_turn_detection(v: &Value, path: &str) -> Result<Value, ApiError> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let o = as_obj(v, path)?;
    let tpath = format!("{path}.type");
    let t = o.get("type").ok_or_else(|| ApiError::missing(&tpath))?;
    let bool_field = |name: &str, out: &mut Map<String, Value>| -> Result<(), ApiError> {
        if let Some(b) = o.get(name) {
            if !b.is_boolean() {
                return Err(ApiError::invalid_type(
                    &format!("{path}.{name}"),
                    "a boolean",
                    b,
                ));
            }
            out.insert(name.to_string(), b.clone());
        }
        Ok(())
    };
    match t.as_str() {
        Some("server_vad") => {
            check_keys(
                o,
                &[
                    "type",
                    "threshold",
                    "prefix_padding_ms",
                    "silence_duration_ms",
                    "idle_timeout_ms",
                    "create_response",
                    "interrupt_response",
                ],
                path,
            )?;
            let mut out = server_vad_default()
                .as_object()
                .cloned()
                .unwrap_or_default();
            if let Some(th) = o.get("threshold") {
                match th.as_f64() {
                    Some(x) if (0.0..=1.0).contains(&x) => {
                        out.insert("threshold".into(), th.clone());
                    }
                    Some(_) => {
                        return Err(ApiError::new(
                            "decimal_above_max_value",
                            format!(
                                "Invalid '{path}.threshold': decimal above maximum value. Expected a value <= 1, but got {th} instead."
                            ),
                            Some(&format!("{path}.threshold")),
                        ));
                    }
                    None => {
                        return Err(ApiError::invalid_type(
                            &format!("{path}.threshold"),
                            "a decimal",
                            th,
                        ));
                    }
                }
            }
            for name in [
                "prefix_padding_ms",
                "silence_duration_ms",
                "idle_timeout_ms",
            ] {
                if let Some(x) = o.get(name) {
                    if !(x.is_u64() || (name == "idle_timeout_ms" && x.is_null())) {
                        return Err(ApiError::invalid_type(
                            &format!("{path}.{name}"),
                            "an integer",
                            x,
                        ));
                    }
                    out.insert(name.to_string(), x.clone());
                }
            }
            bool_field("create_response", &mut out)?;
            bool_field("interrupt_response", &mut out)?;
            Ok(Value::Object(out))
        }
        Some("semantic_vad") => {
            check_keys(
                o,
                &["type", "eagerness", "create_response", "interrupt_response"],
                path,
            )?;
            let mut out = Map::new();
            out.insert("type".into(), json!("semantic_vad"));
            let eag = o.get("eagerness").cloned().unwrap_or(json!("auto"));
            let allowed = ["low", "medium", "high", "auto"];
            if !eag.as_str().is_some_and(|s| allowed.contains(&s)) {
                return Err(ApiError::invalid_value(
                    &format!("{path}.eagerness"),
                    &eag,
                    &allowed,
                ));
            }
            out.insert("eagerness".into(), eag);
            out.insert("create_response".into(), json!(true));
            out.insert("interrupt_response".into(), json!(true));
            bool_field("create_response", &mut out)?;
            bool_field("interrupt_response", &mut out)?;
            Ok(Value::Object(out))
        }
        _ => Err(ApiError::invalid_value(
            &tpath,
            t,
            &["server_vad", "semantic_vad"],
        )),
    }
}

/// Validate a `session.update`'s `session` and apply it to `current`.
/// Returns the new effective session; `current` is untouched on error.
pub(crate) fn apply_session_update(
    current: &Value,
    s: &Value,
    voice_locked: bool,
) -> Result<Value, ApiError> {
    let s = as_obj(s, "session")?;
    match s.get("type") {
        None | Some(Value::Null) => return Err(ApiError::missing("session.type")),
        Some(Value::String(t)) if t == "realtime" => {}
        Some(t @ Value::String(_)) => {
            return Err(ApiError::invalid_value("session.type", t, &["realtime"]));
        }
        Some(t) => return Err(ApiError::invalid_type("session.type", "a string", t)),
    }
    check_keys(
        s,
        &[
            "type",
            "model",
            "instructions",
            "output_modalities",
            "audio",
            "tools",
            "tool_choice",
            "max_output_tokens",
            "tracing",
            "truncation",
            "prompt",
            "include",
            "reasoning",
            "parallel_tool_calls",
        ],
        "session",
    )?;
    let mut next = current.clone();
    let Some(nobj) = next.as_object_mut() else {
        return Err(ApiError::new("server_error", "internal", None));
    };
    for (k, v) in s {
        match k.as_str() {
            "type" | "audio" => {}
            "instructions" | "model" => {
                if !v.is_string() {
                    return Err(ApiError::invalid_type(
                        &format!("session.{k}"),
                        "a string",
                        v,
                    ));
                }
                nobj.insert(k.clone(), v.clone());
            }
            "output_modalities" => {
                let ok = v.as_array().is_some_and(|a| {
                    !a.is_empty()
                        && a.iter()
                            .all(|m| matches!(m.as_str(), Some("audio") | Some("text")))
                });
                if !ok {
                    return Err(ApiError::invalid_value(
                        "session.output_modalities",
                        v,
                        &["text", "audio"],
                    ));
                }
                nobj.insert(k.clone(), v.clone());
            }
            "tools" => {
                validate_tools(v)?;
                nobj.insert(k.clone(), v.clone());
            }
            _ => {
                nobj.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(audio) = s.get("audio") {
        let audio = as_obj(audio, "session.audio")?;
        check_keys(audio, &["input", "output"], "session.audio")?;
        if let Some(input) = audio.get("input") {
            let input = as_obj(input, "session.audio.input")?;
            check_keys(
                input,
                &[
                    "format",
                    "transcription",
                    "noise_reduction",
                    "turn_detection",
                ],
                "session.audio.input",
            )?;
            if let Some(f) = input.get("format") {
                let f = validate_format(f, "session.audio.input.format")?;
                set_path(&mut next, &["audio", "input", "format"], f);
            }
            if let Some(td) = input.get("turn_detection") {
                let td = validate_turn_detection(td, "session.audio.input.turn_detection")?;
                set_path(&mut next, &["audio", "input", "turn_detection"], td);
            }
            if let Some(tr) = input.get("transcription") {
                if !tr.is_null() {
                    let o = as_obj(tr, "session.audio.input.transcription")?;
                    check_keys(
                        o,
                        &["model", "language", "prompt", "delay"],
                        "session.audio.input.transcription",
                    )?;
                }
                set_path(&mut next, &["audio", "input", "transcription"], tr.clone());
            }
            if let Some(nr) = input.get("noise_reduction") {
                if !nr.is_null() {
                    let o = as_obj(nr, "session.audio.input.noise_reduction")?;
                    let t = o.get("type").cloned().unwrap_or(Value::Null);
                    if !matches!(t.as_str(), Some("near_field") | Some("far_field")) {
                        return Err(ApiError::invalid_value(
                            "session.audio.input.noise_reduction.type",
                            &t,
                            &["near_field", "far_field"],
                        ));
                    }
                }
                set_path(
                    &mut next,
                    &["audio", "input", "noise_reduction"],
                    nr.clone(),
                );
            }
        }
        if let Some(output) = audio.get("output") {
            let output = as_obj(output, "session.audio.output")?;
            check_keys(
                output,
                &["format", "voice", "speed"],
                "session.audio.output",
            )?;
            if let Some(f) = output.get("format") {
                let f = validate_format(f, "session.audio.output.format")?;
                set_path(&mut next, &["audio", "output", "format"], f);
            }
            if let Some(v) = output.get("voice") {
                let ok = v.is_string() || v.get("id").is_some_and(Value::is_string);
                if !ok {
                    return Err(ApiError::invalid_type(
                        "session.audio.output.voice",
                        "a string",
                        v,
                    ));
                }
                let cur = current.pointer("/audio/output/voice");
                if voice_locked && cur != Some(v) {
                    return Err(ApiError::new(
                        "cannot_update_voice",
                        "Cannot update a conversation's voice if assistant audio is present.",
                        Some("session.audio.output.voice"),
                    ));
                }
                set_path(&mut next, &["audio", "output", "voice"], v.clone());
            }
            if let Some(sp) = output.get("speed") {
                match sp.as_f64() {
                    Some(x) if (0.25..=1.5).contains(&x) => {}
                    _ => {
                        return Err(ApiError::new(
                            "invalid_value",
                            format!(
                                "Invalid 'session.audio.output.speed': expected a number between 0.25 and 1.5, but got {sp} instead."
                            ),
                            Some("session.audio.output.speed"),
                        ));
                    }
                }
                set_path(&mut next, &["audio", "output", "speed"], sp.clone());
            }
        }
    }
    Ok(next)
}

/// `session.tools`: an array of `function` (with a string `name`) or `mcp` tools.
fn validate_tools(v: &Value) -> Result<(), ApiError> {
    let tools = v
        .as_array()
        .ok_or_else(|| ApiError::invalid_type("session.tools", "an array", v))?;
    for (i, t) in tools.iter().enumerate() {
        let path = format!("session.tools[{i}]");
        let o = as_obj(t, &path)?;
        let tpath = format!("{path}.type");
        let ty = o.get("type").ok_or_else(|| ApiError::missing(&tpath))?;
        match ty.as_str() {
            Some("function") => {
                check_keys(o, &["type", "name", "description", "parameters"], &path)?;
                let npath = format!("{path}.name");
                let name = o.get("name").ok_or_else(|| ApiError::missing(&npath))?;
                if !name.is_string() {
                    return Err(ApiError::invalid_type(&npath, "a string", name));
                }
                if let Some(p) = o.get("parameters")
                    && !p.is_object()
                {
                    return Err(ApiError::invalid_type(
                        &format!("{path}.parameters"),
                        "an object",
                        p,
                    ));
                }
            }
            Some("mcp") => {}
            _ => return Err(ApiError::invalid_value(&tpath, ty, &["function", "mcp"])),
        }
    }
    Ok(())
}

fn set_path(root: &mut Value, path: &[&str], v: Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(obj) = cur.as_object_mut() else {
            return;
        };
        if i + 1 == path.len() {
            obj.insert((*k).to_string(), v);
            return;
        }
        cur = obj
            .entry((*k).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

// ---------------------------------------------------------------------------
// One connection
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
struct Vad {
    rms: f64,
    prefix_ms: u64,
    silence_ms: u64,
    create_response: bool,
    interrupt_response: bool,
}

enum ItemKind {
    /// An assistant message with output audio; `audio_ms` is what was sent
    /// to the client (or the truncation point).
    AssistantAudio {
        audio_ms: u64,
    },
    Other,
}

struct Item {
    kind: ItemKind,
    value: Value,
}

struct Active {
    id: String,
    item_id: String,
    words: Vec<String>,
    words_sent: usize,
    total_ms: u32,
    sent_ms: u32,
    deltas_sent: u32,
    n_deltas: u32,
    first_at: Instant,
    per_delta: Duration,
    fmt: Fmt,
    format: Value,
    voice: Value,
    voice_pos_ms: u64,
    input_tokens: (u64, u64), // (text, audio)
    /// Which response of the connection (from 0).
    index: usize,
    /// Whether the response has a message item (speech); a response with
    /// only a function call has none.
    has_message: bool,
    /// The function call made after the speech, if any.
    tool: Option<SimToolCall>,
    /// Sideband: `output_audio_buffer.started` sent, and not cleared since.
    playing: bool,
}

impl Active {
    fn deadline(&self) -> Instant {
        later(
            self.first_at,
            self.per_delta
                .checked_mul(self.deltas_sent)
                .unwrap_or(Duration::MAX),
        )
    }
    fn transcript_so_far(&self) -> String {
        self.words[..self.words_sent].concat()
    }
}

/// A sideband connection's call.
struct Sideband {
    call_id: String,
    token: u64,
    host: Arc<dyn SidebandHost>,
    progress: Arc<watch::Sender<CallProgress>>,
    cmds: Option<mpsc::UnboundedReceiver<SidebandCmd>>,
}

struct Conn {
    id: u64,
    opened: Instant,
    shared: Arc<Shared>,
    sip: bool,
    /// Set when this is a SIP call's sideband (run by the SIP connector).
    sideband: Option<Sideband>,
    session: Value,
    out: Vec<Value>,
    // input side
    in_fmt: Fmt,
    vad: Option<Vad>,
    carry: Vec<u8>,
    frame_ms: u64,      // ms of complete 20 ms frames processed
    buffer_ms: f64,     // audio in the input buffer since the last commit/clear
    speech_run_ms: u64, // consecutive speech frames while not in speech
    speech_run_start: u64,
    in_speech: bool,
    speech_start_ms: u64,
    silence_run_ms: u64,
    pending_user_item: Option<String>,
    /// The transcript of the next committed user turn (sideband speech).
    next_transcript: Option<String>,
    // conversation
    items: HashMap<String, Item>,
    /// `call_id`s of the function call items in the conversation.
    function_call_ids: HashSet<String>,
    order: Vec<String>,
    user_turns: usize,
    responses: usize,
    committed_audio_ms: u64,
    text_tokens_in: u64,
    prev_input_tokens: u64,
    assistant_audio_sent: bool,
    active: Option<Active>,
    voice_pos_ms: u64,
    // load-test probe
    probe: Option<probe::Probe>,
    scratch: Vec<u8>,
    up_seq: probe::SeqTracker,
    up_call: Option<u32>,
    untagged_appends: u64,
    /// Kernel receive time of the message being handled, when the socket has them.
    rx_us: Option<u32>,
    delta_bytes: u64,
    tagged_responses: u64,
}

enum Exit {
    Continue,
    Close(String),
}

/// `base + d`, saturating at about a year from `base`.
fn later(base: Instant, d: Duration) -> Instant {
    let cap = Duration::from_secs(365 * 24 * 3_600);
    base.checked_add(d.min(cap)).unwrap_or(base)
}

async fn recv_opt<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await,
        None => std::future::pending().await,
    }
}

impl Conn {
    fn new(id: u64, opened: Instant, shared: Arc<Shared>, hs: &mut Handshake) -> Conn {
        let model = hs.model.as_deref().unwrap_or(DEFAULT_MODEL);
        let (session, sideband) = match (hs.sideband.take(), &shared.sip) {
            (Some(a), Some(host)) => (
                a.session,
                Some(Sideband {
                    call_id: a.call_id,
                    token: a.token,
                    host: host.clone(),
                    progress: a.progress,
                    cmds: Some(a.cmds),
                }),
            ),
            _ => (default_session(model), None),
        };
        let probe = shared.cfg.probe.clone();
        let mut c = Conn {
            id,
            opened,
            shared,
            sip: hs.call_id.is_some(),
            sideband,
            session,
            out: Vec::new(),
            in_fmt: Fmt::Pcm24,
            vad: None,
            carry: Vec::new(),
            frame_ms: 0,
            buffer_ms: 0.0,
            speech_run_ms: 0,
            speech_run_start: 0,
            in_speech: false,
            speech_start_ms: 0,
            silence_run_ms: 0,
            pending_user_item: None,
            next_transcript: None,
            items: HashMap::new(),
            function_call_ids: HashSet::new(),
            order: Vec::new(),
            user_turns: 0,
            responses: 0,
            committed_audio_ms: 0,
            text_tokens_in: 0,
            prev_input_tokens: 0,
            assistant_audio_sent: false,
            active: None,
            voice_pos_ms: 0,
            probe,
            scratch: Vec::new(),
            up_seq: probe::SeqTracker::default(),
            up_call: None,
            untagged_appends: 0,
            rx_us: None,
            delta_bytes: 0,
            tagged_responses: 0,
        };
        c.refresh_cache();
        c
    }

    fn cfg(&self) -> &RealtimeSimConfig {
        &self.shared.cfg
    }

    fn refresh_cache(&mut self) {
        let new_fmt = Fmt::of(self.session.pointer("/audio/input/format"));
        if new_fmt != self.in_fmt {
            self.carry.clear();
        }
        self.in_fmt = new_fmt;
        let td = self.session.pointer("/audio/input/turn_detection");
        self.vad = match td {
            Some(td) if td.is_object() => {
                let threshold = td.get("threshold").and_then(Value::as_f64).unwrap_or(0.5);
                Some(Vad {
                    rms: self.shared.cfg.vad_rms * (threshold / 0.5),
                    prefix_ms: td
                        .get("prefix_padding_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(300),
                    silence_ms: td
                        .get("silence_duration_ms")
                        .and_then(Value::as_u64)
                        .unwrap_or(500)
                        .max(20),
                    create_response: td.get("create_response").and_then(Value::as_bool)
                        != Some(false),
                    interrupt_response: td.get("interrupt_response").and_then(Value::as_bool)
                        != Some(false),
                })
            }
            _ => None,
        };
        if self.vad.is_none() && self.in_speech {
            self.in_speech = false;
        }
    }

    fn emit(&mut self, mut ev: Value) {
        if let Some(o) = ev.as_object_mut() {
            o.insert("event_id".into(), Value::String(new_id("event_")));
        }
        self.out.push(ev);
    }

    /// An event whose model has no `event_id` (`input_audio_buffer.dtmf_event_received`).
    fn emit_raw(&mut self, ev: Value) {
        self.out.push(ev);
    }

    fn sip_call_id(&self) -> Option<String> {
        self.sideband.as_ref().map(|s| s.call_id.clone())
    }

    fn error(&mut self, e: ApiError, client_event_id: Option<&str>) {
        self.emit(json!({
            "type": "error",
            "error": {
                "type": "invalid_request_error",
                "code": e.code,
                "message": e.message,
                "param": e.param,
                "event_id": client_event_id,
            }
        }));
    }

    async fn run(
        mut self,
        ws: WebSocketStream<StampedTcp>,
        mut stop: watch::Receiver<bool>,
    ) -> String {
        // One socket object, not split halves: reads and writes take turns in this task,
        // and a split costs a lock and a waker registration per message.
        let mut ws = ws;
        let created = json!({"type": "session.created", "session": self.session.clone()});
        self.emit(created);
        let close_at = self
            .cfg()
            .faults
            .close_after_ms
            .map(|ms| later(self.opened, Duration::from_millis(ms)));
        let error_at = self
            .cfg()
            .faults
            .error_after_ms
            .map(|ms| later(self.opened, Duration::from_millis(ms)));
        let mut server_close: Option<(u16, &'static str)> = None;
        let mut cmds = self.sideband.as_mut().and_then(|s| s.cmds.take());
        // One timer for the response in progress, re-armed when its deadline moves, and
        // one shutdown future: a fresh Sleep or `changed()` per turn of the loop (per
        // append received) costs a timer-wheel insert and removal, or a notify
        // registration, on every message.
        let step_timer = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(step_timer);
        let mut armed: Option<Instant> = None;
        let stopped = async move {
            let _ = stop.changed().await;
        };
        tokio::pin!(stopped);
        let reason = loop {
            if !self.out.is_empty() {
                let mut failed = false;
                if let Some(sb) = &self.sideband {
                    for ev in &self.out {
                        sb.host.server_event(&sb.call_id, ev);
                    }
                }
                for ev in self.out.drain(..) {
                    if ws.feed(Message::text(ev.to_string())).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || ws.flush().await.is_err() {
                    break "send failed".to_string();
                }
            }
            let deadline = self.active.as_ref().map(Active::deadline);
            if let Some(d) = deadline
                && armed != Some(d)
            {
                step_timer.as_mut().reset(tokio::time::Instant::from_std(d));
                armed = Some(d);
            }
            let exit = tokio::select! {
                msg = ws.next() => match msg {
                    None => Exit::Close("client disconnected".to_string()),
                    Some(Err(e)) => Exit::Close(format!("client error: {e}")),
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map(|f| u16::from(f.code).to_string()).unwrap_or_else(|| "none".into());
                        Exit::Close(format!("client closed ({code})"))
                    }
                    Some(Ok(Message::Text(t))) => {
                        self.rx_us = ws.get_ref().last_rx_us();
                        self.on_text(t.as_str());
                        Exit::Continue
                    }
                    Some(Ok(Message::Binary(_))) => {
                        self.error(ApiError::new("invalid_json", "Binary frames are not supported. Send each client event as a JSON text frame.", None), None);
                        Exit::Continue
                    }
                    Some(Ok(_)) => Exit::Continue, // ping/pong handled by tungstenite
                },
                () = &mut step_timer, if deadline.is_some() => {
                    armed = None;
                    self.step_response();
                    Exit::Continue
                }
                Some(cmd) = recv_opt(&mut cmds) => match self.on_sideband_cmd(cmd) {
                    Some(why) => {
                        server_close = Some((1000, why));
                        Exit::Close(format!("sip: {why}"))
                    }
                    None => Exit::Continue,
                },
                _ = sleep_until_opt(close_at) => {
                    server_close = Some((1011, "simulated server failure"));
                    Exit::Close("fault: close_after_ms".to_string())
                }
                _ = sleep_until_opt(error_at) => {
                    self.emit(json!({"type": "error", "error": {
                        "type": "server_error", "code": null,
                        "message": "The server had an error while processing your request. Sorry about that!",
                        "param": null, "event_id": null}}));
                    server_close = Some((1011, "server_error"));
                    Exit::Close("fault: error_after_ms".to_string())
                }
                () = &mut stopped => {
                    server_close = Some((1001, "server shutting down"));
                    Exit::Close("server shutdown".to_string())
                }
            };
            if let Exit::Close(r) = exit {
                break r;
            }
        };
        // Stop everything: the active response just goes away with the task.
        if self.active.take().is_some()
            && let Some(sb) = &self.sideband
        {
            sb.progress.send_modify(|p| {
                p.responses_active = p.responses_active.saturating_sub(1);
            });
        }
        self.probe_closed();
        self.shared.set_closed(self.id, reason.clone());
        if let Some(sb) = &self.sideband {
            for ev in &self.out {
                sb.host.server_event(&sb.call_id, ev);
            }
            sb.host.detached(&sb.call_id, sb.token);
        }
        if let Some((code, why)) = server_close {
            for ev in self.out.drain(..) {
                let _ = ws.feed(Message::text(ev.to_string())).await;
            }
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: why.into(),
            };
            let _ = ws.send(Message::Close(Some(frame))).await;
            let wait = if code == 1001 { 200 } else { 2_000 };
            let _ = tokio::time::timeout(Duration::from_millis(wait), async {
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        } else {
            // Let tungstenite send the close reply, if any.
            let _ = ws.flush().await;
        }
        reason
    }

    // ---- client events ----

    fn on_text(&mut self, text: &str) {
        if self.fast_append(text) {
            return;
        }
        let ev: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.error(
                    ApiError::new(
                        "invalid_json",
                        format!(
                            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON. If you have trouble figuring out how to fix this, please contact us through our help center at help.openai.com.) Parse error: {e}"
                        ),
                        None,
                    ),
                    None,
                );
                return;
            }
        };
        self.shared.record(self.id, self.opened, &ev);
        if let Some(sb) = &self.sideband {
            sb.host.client_event(&sb.call_id, &ev);
        }
        let Some(obj) = ev.as_object() else {
            self.error(ApiError::invalid_type("", "an object", &ev), None);
            return;
        };
        let ceid = obj
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        let ceid = ceid.as_deref();
        let Some(ty) = obj.get("type").and_then(Value::as_str) else {
            self.error(ApiError::missing("type"), ceid);
            return;
        };
        if self.shared.notices.receiver_count() > 0 {
            self.shared.notify(SimNotice::ClientEvent {
                conn: self.id,
                event_type: ty.to_string(),
            });
        }
        let allowed: &[&str] = match ty {
            "session.update" => &["type", "event_id", "session"],
            "input_audio_buffer.append" => &["type", "event_id", "audio"],
            "input_audio_buffer.clear"
            | "input_audio_buffer.commit"
            | "output_audio_buffer.clear" => &["type", "event_id"],
            "conversation.item.create" => &["type", "event_id", "previous_item_id", "item"],
            "conversation.item.delete" | "conversation.item.retrieve" => {
                &["type", "event_id", "item_id"]
            }
            "conversation.item.truncate" => &[
                "type",
                "event_id",
                "item_id",
                "content_index",
                "audio_end_ms",
            ],
            "response.create" => &["type", "event_id", "response"],
            "response.cancel" => &["type", "event_id", "response_id"],
            _ => {
                let e = ApiError::invalid_value("type", &json!(ty), SUPPORTED_CLIENT_EVENTS);
                self.error(e, ceid);
                return;
            }
        };
        if let Err(e) = check_keys(obj, allowed, "") {
            self.error(e, ceid);
            return;
        }
        let r = match ty {
            "session.update" => self.on_session_update(obj),
            "input_audio_buffer.append" if self.sideband.is_some() => Err(ApiError::new(
                "invalid_value",
                "input_audio_buffer.append is not supported on a SIP call's sideband connection: the caller's audio arrives over SIP.",
                Some("type"),
            )),
            "input_audio_buffer.append" => self.on_append(obj),
            "input_audio_buffer.clear" => {
                self.carry.clear();
                self.buffer_ms = 0.0;
                self.in_speech = false;
                self.speech_run_ms = 0;
                self.pending_user_item = None;
                self.emit(json!({"type": "input_audio_buffer.cleared"}));
                Ok(())
            }
            "input_audio_buffer.commit" => self.on_commit(),
            "output_audio_buffer.clear" => {
                if self.sip {
                    let rid = self.active.as_mut().map(|a| {
                        a.playing = false;
                        a.id.clone()
                    });
                    self.emit(json!({"type": "output_audio_buffer.cleared", "response_id": rid}));
                    Ok(())
                } else {
                    Err(ApiError::new(
                        "invalid_value",
                        "output_audio_buffer.clear is only supported for WebRTC and SIP sessions.",
                        Some("type"),
                    ))
                }
            }
            "conversation.item.create" => self.on_item_create(obj),
            "conversation.item.delete" => self.on_item_delete(obj),
            "conversation.item.retrieve" => self.on_item_retrieve(obj),
            "conversation.item.truncate" => self.on_truncate(obj),
            "response.create" => self.on_response_create(obj),
            "response.cancel" => self.on_response_cancel(obj),
            _ => Ok(()),
        };
        if let Err(e) = r {
            self.error(e, ceid);
        }
    }

    fn on_session_update(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let s = obj
            .get("session")
            .ok_or_else(|| ApiError::missing("session"))?;
        if self.sideband.is_some()
            && let Some(param) = crate::sip::forbidden_sip_field(s)
        {
            return Err(ApiError::unknown(&param));
        }
        let mut next = apply_session_update(&self.session, s, self.assistant_audio_sent)?;
        if let Some(f) = &self.shared.cfg.faults.force_output_format {
            set_path(&mut next, &["audio", "output", "format"], f.clone());
        }
        self.session = next;
        self.refresh_cache();
        let ev = json!({"type": "session.updated", "session": self.session.clone()});
        self.emit(ev);
        if let Some(p) = &self.probe {
            p.emit(&probe::ProbeEvent::SessionUpdated {
                conn: self.id,
                at: Instant::now(),
            });
        }
        Ok(())
    }

    fn on_append(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let a = obj.get("audio").ok_or_else(|| ApiError::missing("audio"))?;
        let a = a
            .as_str()
            .ok_or_else(|| ApiError::invalid_type("audio", "a string", a))?;
        self.append_audio(a)
    }

    /// The audio of an append (base64): probe, VAD.
    fn append_audio(&mut self, a: &str) -> Result<(), ApiError> {
        let mut bytes = std::mem::take(&mut self.scratch);
        bytes.clear();
        if B64.decode_vec(a, &mut bytes).is_err() {
            self.scratch = bytes;
            return Err(ApiError::new(
                "invalid_value",
                "Invalid 'audio'. Expected base64-encoded audio bytes.",
                Some("audio"),
            ));
        }
        if self.probe.is_some() {
            self.probe_append(&bytes);
        }
        let bpm = self.in_fmt.bytes_per_ms();
        self.buffer_ms += bytes.len() as f64 / bpm as f64;
        let frame_bytes = bpm * 20;
        self.carry.extend_from_slice(&bytes);
        self.scratch = bytes;
        let mut off = 0;
        while self.carry.len() - off >= frame_bytes {
            let frame_start = self.frame_ms;
            self.frame_ms += 20;
            if let Some(vad) = self.vad {
                let speech = self.in_fmt.rms(&self.carry[off..off + frame_bytes]) > vad.rms;
                self.vad_frame(vad, speech, frame_start);
            }
            off += frame_bytes;
        }
        self.carry.drain(..off);
        Ok(())
    }

    fn probe_append(&mut self, bytes: &[u8]) {
        let Some(p) = &self.probe else {
            return;
        };
        let Some(tag) = probe::read_uplink_tag(bytes) else {
            self.untagged_appends += 1;
            return;
        };
        let latency_us = self
            .rx_us
            .unwrap_or_else(probe::now_us)
            .wrapping_sub(tag.sent_us);
        if self.up_call.is_none() {
            self.up_call = Some(tag.call);
            p.emit(&probe::ProbeEvent::Identified {
                conn: self.id,
                call: tag.call,
            });
        }
        let check = self.up_seq.check(tag.seq);
        p.emit(&probe::ProbeEvent::Uplink {
            conn: self.id,
            call: tag.call,
            seq: tag.seq,
            latency_us,
            check,
        });
    }

    fn probe_closed(&self) {
        if let Some(p) = &self.probe {
            p.emit(&probe::ProbeEvent::Closed {
                conn: self.id,
                call: self.up_call,
                unique_frames: self.up_seq.unique,
                duplicates: self.up_seq.duplicates,
                reordered: self.up_seq.reordered,
                untagged_appends: self.untagged_appends,
                delta_bytes: self.delta_bytes,
                tagged_responses: self.tagged_responses,
            });
        }
    }

    /// A plain `input_audio_buffer.append` (`type`, optional `event_id`,
    /// `audio`), handled without building a JSON tree, when nothing records
    /// or listens to client events. `false`: take the general path.
    fn fast_append(&mut self, text: &str) -> bool {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Append<'a> {
            #[serde(rename = "type")]
            ty: &'a str,
            #[serde(default, rename = "event_id")]
            _event_id: Option<&'a str>,
            audio: &'a str,
        }
        if self.shared.cfg.keep_events
            || self.shared.record.is_some()
            || self.shared.notices.receiver_count() > 0
            || !text.starts_with(r#"{"type":"input_audio_buffer.append""#)
        {
            return false;
        }
        let Ok(ev) = serde_json::from_str::<Append<'_>>(text) else {
            return false;
        };
        if ev.ty != "input_audio_buffer.append" {
            return false;
        }
        // Bad base64 changes nothing here and is reported by the general path.
        self.append_audio(ev.audio).is_ok()
    }

    fn vad_frame(&mut self, vad: Vad, speech: bool, frame_start: u64) {
        let frame_end = frame_start + 20;
        if !self.in_speech {
            if !speech {
                self.speech_run_ms = 0;
                return;
            }
            if self.speech_run_ms == 0 {
                self.speech_run_start = frame_start;
            }
            self.speech_run_ms += 20;
            if self.speech_run_ms < 60 {
                return;
            }
            self.in_speech = true;
            self.silence_run_ms = 0;
            self.speech_run_ms = 0;
            self.speech_start_ms = self.speech_run_start.saturating_sub(vad.prefix_ms);
            let item_id = new_id("item_");
            self.pending_user_item = Some(item_id.clone());
            self.emit(json!({"type": "input_audio_buffer.speech_started",
                "audio_start_ms": self.speech_start_ms, "item_id": item_id}));
            if vad.interrupt_response && self.active.is_some() {
                self.cancel_active("turn_detected");
            }
        } else {
            if speech {
                self.silence_run_ms = 0;
                return;
            }
            self.silence_run_ms += 20;
            if self.silence_run_ms < vad.silence_ms {
                return;
            }
            self.in_speech = false;
            self.silence_run_ms = 0;
            let item_id = self
                .pending_user_item
                .take()
                .unwrap_or_else(|| new_id("item_"));
            self.emit(json!({"type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": frame_end, "item_id": item_id}));
            let dur = frame_end.saturating_sub(self.speech_start_ms);
            self.commit_user_audio(item_id, dur);
            if vad.create_response && self.active.is_none() {
                self.start_response(None);
            }
        }
    }

    fn on_commit(&mut self) -> Result<(), ApiError> {
        if self.buffer_ms < 100.0 {
            return Err(ApiError::new(
                "input_audio_buffer_commit_empty",
                format!(
                    "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, but buffer only has {:.2}ms of audio.",
                    self.buffer_ms
                ),
                None,
            ));
        }
        let item_id = self
            .pending_user_item
            .take()
            .unwrap_or_else(|| new_id("item_"));
        self.in_speech = false;
        self.speech_run_ms = 0;
        let dur = self.buffer_ms as u64;
        self.commit_user_audio(item_id, dur);
        Ok(())
    }

    fn last_item(&self) -> Value {
        self.order
            .last()
            .map(|s| Value::String(s.clone()))
            .unwrap_or(Value::Null)
    }

    fn add_item(&mut self, id: &str, kind: ItemKind, value: Value) {
        self.items.insert(id.to_string(), Item { kind, value });
        self.order.push(id.to_string());
    }

    fn commit_user_audio(&mut self, item_id: String, dur_ms: u64) {
        self.buffer_ms = 0.0;
        self.committed_audio_ms += dur_ms;
        let prev = self.last_item();
        self.emit(json!({"type": "input_audio_buffer.committed",
            "previous_item_id": prev, "item_id": item_id}));
        let item = json!({"id": item_id, "object": "realtime.item", "type": "message",
            "status": "completed", "role": "user",
            "content": [{"type": "input_audio", "transcript": null}]});
        self.emit(
            json!({"type": "conversation.item.added", "previous_item_id": prev, "item": item}),
        );
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": prev, "item": item}),
        );
        self.add_item(&item_id, ItemKind::Other, item);
        let n = self.user_turns;
        self.user_turns += 1;
        let transcribe = self
            .session
            .pointer("/audio/input/transcription")
            .is_some_and(|t| !t.is_null());
        let ts = &self.shared.cfg.caller_transcripts;
        let transcript = self.next_transcript.take().unwrap_or_else(|| {
            ts.get(n.min(ts.len().saturating_sub(1)))
                .cloned()
                .unwrap_or_else(|| "(inaudible)".to_string())
        });
        self.text_tokens_in += (transcript.len() as u64 / 4).max(1);
        if transcribe {
            if let Some(it) = self.items.get_mut(&item_id)
                && let Some(c) = it.value.pointer_mut("/content/0/transcript")
            {
                *c = Value::String(transcript.clone());
            }
            self.emit(
                json!({"type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id, "content_index": 0, "transcript": transcript, "logprobs": null,
                "usage": {"type": "duration", "seconds": (dur_ms as f64 / 1000.0)}}),
            );
        }
    }

    fn on_item_create(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let item = obj.get("item").ok_or_else(|| ApiError::missing("item"))?;
        let io = as_obj(item, "item")?;
        let t = io
            .get("type")
            .ok_or_else(|| ApiError::missing("item.type"))?;
        let mut item = item.clone();
        match t.as_str() {
            Some("message") => {
                let role = io
                    .get("role")
                    .ok_or_else(|| ApiError::missing("item.role"))?;
                let allowed = ["user", "assistant", "system"];
                if !role.as_str().is_some_and(|r| allowed.contains(&r)) {
                    return Err(ApiError::invalid_value("item.role", role, &allowed));
                }
                let content = io
                    .get("content")
                    .ok_or_else(|| ApiError::missing("item.content"))?;
                let parts = content
                    .as_array()
                    .ok_or_else(|| ApiError::invalid_type("item.content", "an array", content))?;
                let ok_types: &[&str] = match role.as_str() {
                    Some("assistant") => &["output_text", "output_audio"],
                    Some("system") => &["input_text"],
                    _ => &["input_text", "input_audio", "input_image"],
                };
                for (i, p) in parts.iter().enumerate() {
                    let pt = p.get("type").cloned().unwrap_or(Value::Null);
                    if !pt.as_str().is_some_and(|s| ok_types.contains(&s)) {
                        return Err(ApiError::invalid_value(
                            &format!("item.content[{i}].type"),
                            &pt,
                            ok_types,
                        ));
                    }
                    if let Some(txt) = p.get("text").and_then(Value::as_str) {
                        self.text_tokens_in += (txt.len() as u64 / 4).max(1);
                    }
                }
            }
            Some("function_call_output") => {
                let Some(call_id) = io.get("call_id").and_then(Value::as_str) else {
                    return Err(ApiError::missing("item.call_id"));
                };
                if !io.get("output").is_some_and(Value::is_string) {
                    return Err(ApiError::missing("item.output"));
                }
                // The server checks that a function_call item with this
                // call_id exists in the conversation.
                if !self.function_call_ids.contains(call_id) {
                    return Err(ApiError::new(
                        "invalid_tool_call_id",
                        format!("Tool call ID '{call_id}' not found in conversation."),
                        None,
                    ));
                }
            }
            Some("function_call") => {
                for k in ["call_id", "name", "arguments"] {
                    if !io.get(k).is_some_and(Value::is_string) {
                        return Err(ApiError::missing(&format!("item.{k}")));
                    }
                }
            }
            _ => {
                return Err(ApiError::invalid_value(
                    "item.type",
                    t,
                    &["message", "function_call", "function_call_output"],
                ));
            }
        }
        let id = match io.get("id").and_then(Value::as_str) {
            Some(id) => {
                if self.items.contains_key(id) {
                    return Err(ApiError::new(
                        "item_already_exists",
                        format!("Item with id '{id}' already exists."),
                        Some("item.id"),
                    ));
                }
                id.to_string()
            }
            None => new_id("item_"),
        };
        if let Some(o) = item.as_object_mut() {
            o.insert("id".into(), json!(id));
            o.insert("object".into(), json!("realtime.item"));
            o.insert("status".into(), json!("completed"));
        }
        let prev = match obj.get("previous_item_id") {
            Some(Value::String(p)) if p != "root" => {
                if !self.items.contains_key(p) {
                    return Err(ApiError::new(
                        "item_not_found",
                        format!(
                            "Error adding item: the previous item with id '{p}' does not exist."
                        ),
                        Some("previous_item_id"),
                    ));
                }
                json!(p)
            }
            Some(Value::String(_)) => Value::Null,
            _ => self.last_item(),
        };
        self.emit(
            json!({"type": "conversation.item.added", "previous_item_id": prev, "item": item}),
        );
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": prev, "item": item}),
        );
        let call_id = item
            .get("call_id")
            .and_then(Value::as_str)
            .map(str::to_string);
        match (t.as_str(), call_id) {
            (Some("function_call"), Some(call_id)) => {
                self.function_call_ids.insert(call_id);
            }
            (Some("function_call_output"), Some(call_id)) => {
                let output = item
                    .get("output")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                lock(&self.shared.tools).outputs.push(SimToolOutput {
                    conn: self.id,
                    sip_call_id: self.sip_call_id(),
                    call_id: call_id.clone(),
                    item_id: id.clone(),
                    output,
                });
                self.shared.notify(SimNotice::ToolOutput {
                    conn: self.id,
                    call_id,
                });
            }
            _ => {}
        }
        self.add_item(&id, ItemKind::Other, item);
        Ok(())
    }

    fn item_id_param(obj: &Map<String, Value>) -> Result<&str, ApiError> {
        let v = obj
            .get("item_id")
            .ok_or_else(|| ApiError::missing("item_id"))?;
        v.as_str()
            .ok_or_else(|| ApiError::invalid_type("item_id", "a string", v))
    }

    fn not_found(id: &str) -> ApiError {
        ApiError::new(
            "item_not_found",
            format!("Item with item_id '{id}' not found."),
            Some("item_id"),
        )
    }

    fn on_item_delete(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let id = Self::item_id_param(obj)?.to_string();
        if self.items.remove(&id).is_none() {
            return Err(Self::not_found(&id));
        }
        self.order.retain(|x| x != &id);
        self.emit(json!({"type": "conversation.item.deleted", "item_id": id}));
        Ok(())
    }

    fn on_item_retrieve(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let id = Self::item_id_param(obj)?;
        let item = self
            .items
            .get(id)
            .map(|i| i.value.clone())
            .ok_or_else(|| Self::not_found(id))?;
        self.emit(json!({"type": "conversation.item.retrieved", "item": item}));
        Ok(())
    }

    fn on_truncate(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let id = Self::item_id_param(obj)?.to_string();
        let r = self.truncate(obj, &id);
        match &r {
            Ok(end) => self.shared.notify(SimNotice::TruncateAccepted {
                conn: self.id,
                item_id: id,
                audio_end_ms: *end,
            }),
            Err(e) => self.shared.notify(SimNotice::TruncateRejected {
                conn: self.id,
                item_id: id,
                message: e.message.clone(),
            }),
        }
        r.map(|_| ())
    }

    fn truncate(&mut self, obj: &Map<String, Value>, id: &str) -> Result<u64, ApiError> {
        let ci = obj
            .get("content_index")
            .ok_or_else(|| ApiError::missing("content_index"))?;
        let ci_n = ci
            .as_u64()
            .ok_or_else(|| ApiError::invalid_type("content_index", "an integer", ci))?;
        let end = obj
            .get("audio_end_ms")
            .ok_or_else(|| ApiError::missing("audio_end_ms"))?;
        let end_ms = end
            .as_u64()
            .ok_or_else(|| ApiError::invalid_type("audio_end_ms", "an integer", end))?;
        let item = self.items.get_mut(id).ok_or_else(|| Self::not_found(id))?;
        let ItemKind::AssistantAudio { audio_ms } = &mut item.kind else {
            return Err(ApiError::new(
                "invalid_value",
                "Only model output audio messages can be truncated",
                Some("item_id"),
            ));
        };
        if ci_n != 0 {
            return Err(ApiError::new(
                "invalid_value",
                format!(
                    "Invalid content_index: {ci_n}. The item has no content part at that index."
                ),
                Some("content_index"),
            ));
        }
        if end_ms > *audio_ms {
            return Err(ApiError::new(
                "invalid_value",
                format!("Audio content of {audio_ms}ms is already shorter than {end_ms}ms"),
                Some("audio_end_ms"),
            ));
        }
        *audio_ms = end_ms;
        self.emit(json!({"type": "conversation.item.truncated",
            "item_id": id, "content_index": ci_n, "audio_end_ms": end_ms}));
        Ok(end_ms)
    }

    fn on_response_create(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        if let Some(a) = &self.active {
            return Err(ApiError::new(
                "conversation_already_has_active_response",
                format!(
                    "Conversation already has an active response in progress: {}. Wait until the response is finished before creating a new one.",
                    a.id
                ),
                None,
            ));
        }
        let mut instructions = None;
        if let Some(r) = obj.get("response") {
            let ro = as_obj(r, "response")?;
            if let Some(i) = ro.get("instructions") {
                let s = i.as_str().ok_or_else(|| {
                    ApiError::invalid_type("response.instructions", "a string", i)
                })?;
                instructions = Some(s.to_string());
            }
        }
        self.start_response(instructions);
        Ok(())
    }

    fn on_response_cancel(&mut self, obj: &Map<String, Value>) -> Result<(), ApiError> {
        let want = obj.get("response_id").and_then(Value::as_str);
        match &self.active {
            Some(a) if want.is_none_or(|w| w == a.id) => {
                self.cancel_active("client_cancelled");
                Ok(())
            }
            _ => Err(ApiError::new(
                "response_cancel_not_active",
                "Cancellation failed: no active response found",
                None,
            )),
        }
    }

    // ---- responses ----

    /// The function call response `n` makes, if scripted and allowed by the
    /// session; a scripted call the session does not allow is recorded as a
    /// miss (the real model cannot call an undeclared tool).
    fn plan_tool_call(&mut self, n: usize) -> Option<SimToolCall> {
        let tc = self.shared.cfg.tool_calls.get(&n)?.clone();
        let declared: Vec<&str> = self
            .session
            .get("tools")
            .and_then(Value::as_array)
            .map(|ts| {
                ts.iter()
                    .filter(|t| t.get("type").and_then(Value::as_str) == Some("function"))
                    .filter_map(|t| t.get("name").and_then(Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        let reason = if self.session.get("tool_choice").and_then(Value::as_str) == Some("none") {
            Some("session.tool_choice is \"none\"".to_string())
        } else if !declared.contains(&tc.name.as_str()) {
            Some(format!(
                "no function tool named '{}' in session.tools (declared: {declared:?})",
                tc.name
            ))
        } else {
            None
        };
        let Some(reason) = reason else {
            return Some(tc);
        };
        lock(&self.shared.tools).misses.push(SimToolCallMiss {
            conn: self.id,
            sip_call_id: self.sip_call_id(),
            response_index: n,
            name: tc.name.clone(),
            reason,
        });
        self.shared.notify(SimNotice::ToolCallMissed {
            conn: self.id,
            name: tc.name,
        });
        None
    }

    fn start_response(&mut self, instructions: Option<String>) {
        let n = self.responses;
        self.responses += 1;
        let cfg = &self.shared.cfg;
        let reply = cfg
            .replies
            .get(n.min(cfg.replies.len().saturating_sub(1)))
            .cloned()
            .unwrap_or_else(|| SimReply::new("Okay.", 600));
        let delta_ms = cfg.delta_ms.max(1);
        let per_delta = if cfg.speed > 0.0 && cfg.speed.is_finite() {
            Duration::try_from_secs_f64(f64::from(delta_ms) / 1000.0 / cfg.speed)
                .unwrap_or(Duration::from_secs(3_600))
        } else {
            Duration::ZERO
        };
        let first_at = later(
            Instant::now(),
            Duration::from_millis(cfg.first_delta_delay_ms),
        );
        let tool = self.plan_tool_call(n);
        let has_message = tool.is_none() || !reply.text.trim().is_empty() || reply.audio_ms > 0;
        let (text, audio_ms) = if has_message {
            (reply.text.as_str(), reply.audio_ms)
        } else {
            ("", 0)
        };
        let words: Vec<String> = text
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                if i == 0 {
                    w.to_string()
                } else {
                    format!(" {w}")
                }
            })
            .collect();
        let instr_len = instructions
            .as_deref()
            .or_else(|| self.session.get("instructions").and_then(Value::as_str))
            .map_or(0, str::len) as u64;
        let text_in = 8 + instr_len / 4 + self.text_tokens_in;
        let audio_in = self.committed_audio_ms / 100;
        let format = self
            .session
            .pointer("/audio/output/format")
            .cloned()
            .unwrap_or(json!({"type": "audio/pcm", "rate": 24000}));
        let voice = self
            .session
            .pointer("/audio/output/voice")
            .cloned()
            .unwrap_or(json!("alloy"));
        let modalities = self
            .session
            .get("output_modalities")
            .cloned()
            .unwrap_or(json!(["audio"]));
        let max_tokens = self
            .session
            .get("max_output_tokens")
            .cloned()
            .unwrap_or(json!("inf"));
        let a = Active {
            id: new_id("resp_"),
            item_id: new_id("item_"),
            words,
            words_sent: 0,
            total_ms: audio_ms,
            sent_ms: 0,
            deltas_sent: 0,
            n_deltas: audio_ms.div_ceil(delta_ms),
            first_at,
            per_delta,
            fmt: Fmt::of(Some(&format)),
            format,
            voice,
            voice_pos_ms: self.voice_pos_ms,
            input_tokens: (text_in, audio_in),
            index: n,
            has_message,
            tool,
            playing: false,
        };
        self.emit(json!({"type": "response.created", "response": {
            "object": "realtime.response", "id": a.id, "status": "in_progress",
            "status_details": null, "output": [], "conversation_id": null,
            "output_modalities": modalities, "max_output_tokens": max_tokens,
            "audio": {"output": {"format": a.format, "voice": a.voice}},
            "usage": null, "metadata": null}}));
        if a.has_message {
            let prev = self.last_item();
            let item = json!({"id": a.item_id, "object": "realtime.item", "type": "message",
                "status": "in_progress", "role": "assistant", "content": []});
            self.emit(
                json!({"type": "response.output_item.added", "response_id": a.id,
                "output_index": 0, "item": item}),
            );
            self.emit(
                json!({"type": "conversation.item.added", "previous_item_id": prev, "item": item}),
            );
            self.emit(
                json!({"type": "response.content_part.added", "response_id": a.id,
                "item_id": a.item_id, "output_index": 0, "content_index": 0,
                "part": {"type": "audio", "transcript": ""}}),
            );
            self.add_item(&a.item_id, ItemKind::AssistantAudio { audio_ms: 0 }, item);
        }
        self.active = Some(a);
        if let Some(sb) = &self.sideband {
            sb.progress.send_modify(|p| p.responses_active += 1);
        }
    }

    /// Called when the active response's deadline passes: one more delta,
    /// and the closing events after the last one. On a sideband the audio
    /// goes over SIP: the same timeline, without audio deltas, and
    /// `output_audio_buffer.started` at the first one.
    fn step_response(&mut self) {
        let delta_ms = self.shared.cfg.delta_ms.max(1);
        let no_audio = self.sideband.is_some();
        let Some(a) = self.active.as_mut() else {
            return;
        };
        if a.deltas_sent >= a.n_deltas {
            self.finish_active(None);
            return;
        }
        let ms = delta_ms.min(a.total_ms - a.sent_ms);
        let start_playing = no_audio && a.deltas_sent == 0;
        let mut chunk = if no_audio {
            Vec::new()
        } else {
            voice_chunk(a.fmt, a.voice_pos_ms, ms)
        };
        if self.probe.is_some() && !no_audio {
            if a.deltas_sent == 0 && chunk.len() >= probe::DOWNLINK_TAG_LEN {
                probe::write_downlink_tag(&mut chunk, probe::now_us());
                self.tagged_responses += 1;
            }
            self.delta_bytes += chunk.len() as u64;
        }
        if start_playing {
            a.playing = true;
        }
        a.voice_pos_ms += u64::from(ms);
        a.sent_ms += ms;
        a.deltas_sent += 1;
        let target = (a.words.len() * a.deltas_sent as usize).div_ceil(a.n_deltas as usize);
        let (rid, iid) = (a.id.clone(), a.item_id.clone());
        let new_words: Vec<String> = a.words[a.words_sent..target.min(a.words.len())].to_vec();
        a.words_sent = target.min(a.words.len());
        let done = a.deltas_sent >= a.n_deltas;
        let sent_ms = u64::from(a.sent_ms);
        if let Some(Item {
            kind: ItemKind::AssistantAudio { audio_ms },
            ..
        }) = self.items.get_mut(&iid)
        {
            *audio_ms = sent_ms.max(*audio_ms);
        }
        self.assistant_audio_sent = true;
        if start_playing {
            self.emit(json!({"type": "output_audio_buffer.started", "response_id": rid}));
        }
        if !no_audio {
            self.emit(
                json!({"type": "response.output_audio.delta", "response_id": rid,
                "item_id": iid, "output_index": 0, "content_index": 0,
                "delta": B64.encode(&chunk)}),
            );
        }
        for w in new_words {
            self.emit(
                json!({"type": "response.output_audio_transcript.delta", "response_id": rid,
                "item_id": iid, "output_index": 0, "content_index": 0, "delta": w}),
            );
        }
        if done {
            self.finish_active(None);
        }
    }

    fn cancel_active(&mut self, reason: &str) {
        if let Some(a) = &self.active {
            self.shared.notify(SimNotice::ResponseCancelled {
                conn: self.id,
                response_id: a.id.clone(),
            });
        }
        self.finish_active(Some(reason));
    }

    /// Emit the closing events of the active response: completed
    /// (`cancel_reason` None) or cancelled.
    fn finish_active(&mut self, cancel_reason: Option<&str>) {
        let Some(a) = self.active.take() else {
            return;
        };
        self.voice_pos_ms = a.voice_pos_ms;
        let rid = a.id.as_str();
        if a.playing && cancel_reason.is_some() {
            // SIP/WebRTC: the interrupted audio is cut off at the phone.
            self.emit(json!({"type": "output_audio_buffer.cleared", "response_id": rid}));
        }
        let mut output = Vec::new();
        let mut text_out = 0;
        if a.has_message {
            let item = self.finish_message(&a, cancel_reason.is_some());
            text_out += (a.words_sent as u64 * 4).div_ceil(3);
            output.push(item);
        }
        if let (Some(tool), None) = (&a.tool, cancel_reason) {
            let item = self.emit_function_call(&a, tool, output.len());
            text_out += (tool.arguments_string().len() as u64 / 4).max(1) + 4;
            output.push(item);
        }
        // Usage: ~10 tokens/s of caller audio in, ~20 tokens/s of audio out.
        let (text_in, audio_in) = a.input_tokens;
        let input = text_in + audio_in;
        let cached = (self.prev_input_tokens / 64 * 64).min(input);
        let cached_text = cached.min(text_in);
        let cached_audio = cached - cached_text;
        let audio_out = u64::from(a.sent_ms) / 50;
        let output_tokens = audio_out + text_out;
        self.prev_input_tokens = input + output_tokens;
        self.text_tokens_in += text_out;
        let (status, details) = match cancel_reason {
            Some(r) => ("cancelled", json!({"type": "cancelled", "reason": r})),
            None => ("completed", Value::Null),
        };
        self.emit(json!({"type": "response.done", "response": {
            "object": "realtime.response", "id": rid, "status": status,
            "status_details": details, "output": output, "conversation_id": null,
            "output_modalities": ["audio"], "max_output_tokens": "inf",
            "audio": {"output": {"format": a.format, "voice": a.voice}},
            "usage": {
                "total_tokens": input + output_tokens, "input_tokens": input,
                "output_tokens": output_tokens,
                "input_token_details": {"text_tokens": text_in, "audio_tokens": audio_in,
                    "image_tokens": 0, "cached_tokens": cached,
                    "cached_tokens_details": {"text_tokens": cached_text,
                        "audio_tokens": cached_audio, "image_tokens": 0}},
                "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out}},
            "metadata": null}}));
        if a.playing && cancel_reason.is_none() {
            // Playback runs on the simulator's clock (`speed`), so the
            // buffer drains as the response completes.
            self.emit(json!({"type": "output_audio_buffer.stopped", "response_id": rid}));
        }
        if let Some(sb) = &self.sideband {
            sb.progress.send_modify(|p| {
                p.responses_active = p.responses_active.saturating_sub(1);
                p.responses_done += 1;
            });
        }
    }

    /// The closing events of the response's message item; returns the item.
    fn finish_message(&mut self, a: &Active, cancelled: bool) -> Value {
        let transcript = if cancelled {
            a.transcript_so_far()
        } else {
            a.words.concat()
        };
        let item_status = if cancelled { "incomplete" } else { "completed" };
        let (rid, iid) = (a.id.as_str(), a.item_id.as_str());
        let item = json!({"id": iid, "object": "realtime.item", "type": "message",
            "status": item_status, "role": "assistant",
            "content": [{"type": "output_audio", "transcript": transcript}]});
        self.emit(
            json!({"type": "response.output_audio.done", "response_id": rid,
            "item_id": iid, "output_index": 0, "content_index": 0}),
        );
        self.emit(
            json!({"type": "response.output_audio_transcript.done", "response_id": rid,
            "item_id": iid, "output_index": 0, "content_index": 0, "transcript": transcript}),
        );
        self.emit(
            json!({"type": "response.content_part.done", "response_id": rid,
            "item_id": iid, "output_index": 0, "content_index": 0,
            "part": {"type": "audio", "transcript": transcript}}),
        );
        self.emit(
            json!({"type": "response.output_item.done", "response_id": rid,
            "output_index": 0, "item": item}),
        );
        let prev = self.previous_of(iid);
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": prev, "item": item}),
        );
        if let Some(it) = self.items.get_mut(iid) {
            it.value = item.clone();
        }
        item
    }

    fn previous_of(&self, id: &str) -> Value {
        match self.order.iter().position(|x| x == id) {
            Some(p) if p > 0 => json!(self.order[p - 1]),
            _ => Value::Null,
        }
    }

    /// A function call output item, streamed as the GA API does: item added
    /// (arguments ""), arguments deltas and done, item done. Returns the
    /// completed item.
    fn emit_function_call(&mut self, a: &Active, tool: &SimToolCall, output_index: usize) -> Value {
        let rid = a.id.as_str();
        let item_id = new_id("item_");
        let call_id = new_id("call_");
        let arguments = tool.arguments_string();
        let prev = self.last_item();
        let added = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
            "status": "in_progress", "name": tool.name, "call_id": call_id, "arguments": ""});
        self.emit(
            json!({"type": "response.output_item.added", "response_id": rid,
            "output_index": output_index, "item": added}),
        );
        self.emit(
            json!({"type": "conversation.item.added", "previous_item_id": prev, "item": added}),
        );
        // A few deltas, split on char boundaries.
        let chars: Vec<char> = arguments.chars().collect();
        let per = chars.len().div_ceil(3).max(1);
        for piece in chars.chunks(per) {
            let delta: String = piece.iter().collect();
            self.emit(json!({"type": "response.function_call_arguments.delta",
                "response_id": rid, "item_id": item_id, "output_index": output_index,
                "call_id": call_id, "delta": delta}));
        }
        self.emit(json!({"type": "response.function_call_arguments.done",
            "response_id": rid, "item_id": item_id, "output_index": output_index,
            "call_id": call_id, "name": tool.name, "arguments": arguments}));
        let item = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
            "status": "completed", "name": tool.name, "call_id": call_id,
            "arguments": arguments});
        self.emit(
            json!({"type": "response.output_item.done", "response_id": rid,
            "output_index": output_index, "item": item}),
        );
        self.emit(
            json!({"type": "conversation.item.done", "previous_item_id": prev, "item": item}),
        );
        self.add_item(&item_id, ItemKind::Other, item.clone());
        self.function_call_ids.insert(call_id.clone());
        lock(&self.shared.tools).calls.push(SimFunctionCall {
            conn: self.id,
            sip_call_id: self.sip_call_id(),
            response_index: a.index,
            response_id: a.id.clone(),
            item_id,
            call_id: call_id.clone(),
            name: tool.name.clone(),
            arguments,
        });
        self.shared.notify(SimNotice::FunctionCall {
            conn: self.id,
            call_id,
            name: tool.name.clone(),
        });
        item
    }

    // ---- the SIP leg (sideband connections) ----

    /// The caller's side of a SIP call. `Some(reason)`: close the socket.
    fn on_sideband_cmd(&mut self, cmd: SidebandCmd) -> Option<&'static str> {
        let now_ms = self.opened.elapsed().as_millis() as u64;
        match cmd {
            SidebandCmd::SpeechStarted => {
                self.speech_start_ms = now_ms;
                let vad = self.vad?;
                self.in_speech = true;
                let item_id = new_id("item_");
                self.pending_user_item = Some(item_id.clone());
                self.emit(json!({"type": "input_audio_buffer.speech_started",
                    "audio_start_ms": now_ms, "item_id": item_id}));
                if vad.interrupt_response && self.active.is_some() {
                    self.cancel_active("turn_detected");
                }
            }
            SidebandCmd::SpeechStopped { transcript } => {
                let dur = now_ms.saturating_sub(self.speech_start_ms);
                self.next_transcript = Some(transcript);
                match self.vad {
                    Some(vad) if self.in_speech => {
                        self.in_speech = false;
                        let item_id = self
                            .pending_user_item
                            .take()
                            .unwrap_or_else(|| new_id("item_"));
                        self.emit(json!({"type": "input_audio_buffer.speech_stopped",
                            "audio_end_ms": now_ms, "item_id": item_id}));
                        self.commit_user_audio(item_id, dur);
                        if vad.create_response && self.active.is_none() {
                            self.start_response(None);
                        }
                    }
                    // No turn detection: the audio waits in the input
                    // buffer for the client's `input_audio_buffer.commit`.
                    _ => self.buffer_ms += dur as f64,
                }
            }
            SidebandCmd::Dtmf { digit } => {
                let received_at = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                self.emit_raw(json!({"type": "input_audio_buffer.dtmf_event_received",
                    "event": digit, "received_at": received_at}));
            }
            SidebandCmd::End { reason } => return Some(reason),
        }
        None
    }
}

// ---------------------------------------------------------------------------
// Load-test probe: frame tags and measurements
// ---------------------------------------------------------------------------

/// Frame tags and the metrics sink used by the load generator.
///
/// Both the caller emulator and the simulator run in the load generator's
/// process, so they share one clock ([`probe::now_us`]): Unix-time microseconds, the
/// clock of the kernel's receive timestamps, as a wrapping `u32` (differences are
/// taken with `wrapping_sub`; one wraps after about 71 minutes).
///
/// * **Uplink tag** ([`probe::UPLINK_TAG_LEN`] = 22 bytes at the start of a
///   160-byte caller frame): a 2-byte magic, then the call index (24 bits),
///   the frame sequence (24 bits) and the send time (32 bits), one nibble per
///   byte in the low-level µ-law codes `0xF0..=0xFF` (|sample| ≤ 120), so the
///   tag adds almost no energy and noise frames stay below any VAD threshold.
///   The bridge's gap-filling silence (`0xFF`) carries no tag.
/// * **Downlink tag** ([`probe::DOWNLINK_TAG_LEN`] = 8 bytes): a 4-byte magic
///   and the send time, written by the simulator at the start of the first
///   delta of each response, which the bridge relays as the first 160-byte
///   Twilio frame of the burst.
pub mod probe {
    use std::sync::Arc;
    use std::time::{SystemTime, UNIX_EPOCH};

    /// Microseconds of the Unix time `secs`.`nanos` (wrapping): the clock of the tags
    /// and of the kernel's receive timestamps (`SO_TIMESTAMPNS`, see [`crate::stamp`]).
    pub fn us_of(secs: u64, nanos: u32) -> u32 {
        secs.wrapping_mul(1_000_000)
            .wrapping_add(u64::from(nanos / 1000)) as u32
    }

    /// [`us_of`] now.
    pub fn now_us() -> u32 {
        let d = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        us_of(d.as_secs(), d.subsec_nanos())
    }

    /// First bytes of an uplink tag (both low-level µ-law codes).
    pub const UPLINK_MAGIC: [u8; 2] = [0xF5, 0x7A];
    /// Bytes an uplink tag occupies at the start of a frame.
    pub const UPLINK_TAG_LEN: usize = 2 + 6 + 6 + 8;
    /// First bytes of a downlink tag.
    pub const DOWNLINK_MAGIC: [u8; 4] = [0x5A, 0xA5, 0x3C, 0xC3];
    /// Bytes a downlink tag occupies at the start of a delta.
    pub const DOWNLINK_TAG_LEN: usize = 8;
    /// Sequence numbers and call indexes are 24-bit.
    pub const SEQ_MASK: u32 = 0x00FF_FFFF;

    /// What a caller frame carries.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct UplinkTag {
        /// Call index (24 bits), chosen by the load generator.
        pub call: u32,
        /// Frame sequence in the call (24 bits, wrapping).
        pub seq: u32,
        /// [`now_us`] when the frame was sent.
        pub sent_us: u32,
    }

    fn put_nibbles(out: &mut [u8], v: u32) {
        let n = out.len();
        for (i, b) in out.iter_mut().enumerate() {
            let shift = 4 * (n - 1 - i);
            *b = 0xF0 | ((v >> shift) & 0xF) as u8;
        }
    }

    fn get_nibbles(inp: &[u8]) -> Option<u32> {
        let mut v = 0u32;
        for &b in inp {
            if b & 0xF0 != 0xF0 {
                return None;
            }
            v = (v << 4) | u32::from(b & 0x0F);
        }
        Some(v)
    }

    /// Write `tag` at the start of `frame` (at least [`UPLINK_TAG_LEN`] bytes; shorter: nothing).
    pub fn write_uplink_tag(frame: &mut [u8], tag: UplinkTag) {
        if frame.len() < UPLINK_TAG_LEN {
            return;
        }
        frame[..2].copy_from_slice(&UPLINK_MAGIC);
        put_nibbles(&mut frame[2..8], tag.call & SEQ_MASK);
        put_nibbles(&mut frame[8..14], tag.seq & SEQ_MASK);
        put_nibbles(&mut frame[14..22], tag.sent_us);
    }

    /// The tag at the start of `frame`, if it carries one.
    pub fn read_uplink_tag(frame: &[u8]) -> Option<UplinkTag> {
        if frame.len() < UPLINK_TAG_LEN || frame[..2] != UPLINK_MAGIC {
            return None;
        }
        Some(UplinkTag {
            call: get_nibbles(&frame[2..8])?,
            seq: get_nibbles(&frame[8..14])?,
            sent_us: get_nibbles(&frame[14..22])?,
        })
    }

    /// Write a downlink tag (magic + `sent_us`) at the start of `buf`.
    pub fn write_downlink_tag(buf: &mut [u8], sent_us: u32) {
        if buf.len() < DOWNLINK_TAG_LEN {
            return;
        }
        buf[..4].copy_from_slice(&DOWNLINK_MAGIC);
        buf[4..8].copy_from_slice(&sent_us.to_be_bytes());
    }

    /// The send time of a downlink tag at the start of `buf`, if any.
    pub fn read_downlink_tag(buf: &[u8]) -> Option<u32> {
        if buf.len() < DOWNLINK_TAG_LEN || buf[..4] != DOWNLINK_MAGIC {
            return None;
        }
        Some(u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]))
    }

    /// How a tagged append's sequence number compares with what came before
    /// on its connection.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SeqCheck {
        /// The next expected frame (or the first one).
        InOrder,
        /// Ahead of the expected frame: this many frames are missing (so far).
        Gap(u32),
        /// A frame already received.
        Duplicate,
        /// A frame older than the newest one, not received before (it was
        /// counted in a `Gap`; it arrived out of order).
        Reordered,
    }

    /// What the simulator reports to the probe. Per-frame events carry no
    /// allocation.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ProbeEvent {
        /// A `session.updated` was sent on connection `conn`.
        SessionUpdated { conn: u64, at: std::time::Instant },
        /// The first tagged append of connection `conn` named this call.
        Identified { conn: u64, call: u32 },
        /// A tagged `input_audio_buffer.append` arrived.
        Uplink {
            conn: u64,
            call: u32,
            /// The frame's sequence in its call (from 0).
            seq: u32,
            /// now − the tag's send time, µs.
            latency_us: u32,
            check: SeqCheck,
        },
        /// The connection closed: totals.
        Closed {
            conn: u64,
            /// The call of the tags, if any tagged append arrived.
            call: Option<u32>,
            /// Distinct tagged frames received.
            unique_frames: u64,
            duplicates: u64,
            reordered: u64,
            /// Appends without a tag (the bridge's silence fill).
            untagged_appends: u64,
            /// Audio bytes sent in `response.output_audio.delta`s.
            delta_bytes: u64,
            /// Responses whose first delta carried a downlink tag.
            tagged_responses: u64,
        },
    }

    /// The metrics sink of [`super::RealtimeSimConfig::probe`]. Called from the
    /// connection tasks: keep it cheap (atomics, short locks).
    #[derive(Clone)]
    pub struct Probe(pub Arc<dyn Fn(&ProbeEvent) + Send + Sync>);

    impl Probe {
        pub fn new(f: impl Fn(&ProbeEvent) + Send + Sync + 'static) -> Self {
            Probe(Arc::new(f))
        }
        pub(crate) fn emit(&self, ev: &ProbeEvent) {
            (self.0)(ev);
        }
    }

    impl std::fmt::Debug for Probe {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Probe(..)")
        }
    }

    /// Per-connection sequence tracking (a 64-frame window for duplicates).
    #[derive(Debug, Default)]
    pub(crate) struct SeqTracker {
        /// The newest sequence seen.
        newest: Option<u32>,
        /// Bit i set: `newest - i` was received.
        window: u64,
        pub(crate) unique: u64,
        pub(crate) duplicates: u64,
        pub(crate) reordered: u64,
    }

    impl SeqTracker {
        pub(crate) fn check(&mut self, seq: u32) -> SeqCheck {
            let Some(newest) = self.newest else {
                self.newest = Some(seq);
                self.window = 1;
                self.unique += 1;
                return SeqCheck::InOrder;
            };
            let ahead = seq.wrapping_sub(newest) & SEQ_MASK;
            if ahead != 0 && ahead < SEQ_MASK / 2 {
                self.newest = Some(seq);
                self.window = if ahead >= 64 {
                    1
                } else {
                    (self.window << ahead) | 1
                };
                self.unique += 1;
                return if ahead == 1 {
                    SeqCheck::InOrder
                } else {
                    SeqCheck::Gap(ahead - 1)
                };
            }
            let behind = newest.wrapping_sub(seq) & SEQ_MASK;
            if behind < 64 && self.window & (1 << behind) != 0 {
                self.duplicates += 1;
                return SeqCheck::Duplicate;
            }
            if behind < 64 {
                self.window |= 1 << behind;
            }
            // Older than the window: assume it was missing (counted in a gap).
            self.unique += 1;
            self.reordered += 1;
            SeqCheck::Reordered
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn uplink_tag_roundtrip_and_level() {
            let mut f = [0xFFu8; 160];
            let tag = UplinkTag {
                call: 0x12_3456,
                seq: 0xAB_CDEF,
                sent_us: 0xDEAD_BEEF,
            };
            write_uplink_tag(&mut f, tag);
            assert_eq!(read_uplink_tag(&f), Some(tag));
            assert!(voxbridge_audio::mulaw_rms(&f) < 60.0);
            assert_eq!(read_uplink_tag(&[0xFF; 160]), None);
        }

        #[test]
        fn downlink_tag_roundtrip() {
            let mut f = [0u8; 160];
            write_downlink_tag(&mut f, 123_456);
            assert_eq!(read_downlink_tag(&f), Some(123_456));
            // The simulator's voice never starts a frame with the magic.
            for frame in super::super::voice().mulaw.chunks(160) {
                assert_eq!(read_downlink_tag(frame), None);
            }
        }

        #[test]
        fn sequence_checks() {
            let mut t = SeqTracker::default();
            assert_eq!(t.check(5), SeqCheck::InOrder);
            assert_eq!(t.check(6), SeqCheck::InOrder);
            assert_eq!(t.check(9), SeqCheck::Gap(2));
            assert_eq!(t.check(7), SeqCheck::Reordered);
            assert_eq!(t.check(7), SeqCheck::Duplicate);
            assert_eq!(t.check(9), SeqCheck::Duplicate);
            assert_eq!(t.check(10), SeqCheck::InOrder);
            assert_eq!((t.unique, t.duplicates, t.reordered), (5, 2, 1));
            let mut w = SeqTracker::default();
            assert_eq!(w.check(SEQ_MASK), SeqCheck::InOrder);
            assert_eq!(w.check(0), SeqCheck::InOrder);
        }
    }
}
