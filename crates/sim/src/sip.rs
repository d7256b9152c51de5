//! An emulator of OpenAI's SIP connector ("Realtime Calls"), so voxbridge's
//! SIP path can be tested end to end offline.
//!
//! [`SipConnector::start`] runs a [`RealtimeSim`] whose port also serves the
//! Calls REST API, as `api.openai.com` does:
//!
//! * `POST {api_base}/realtime/calls/{call_id}/accept | reject | refer | hangup`
//!   (bearer auth with the simulator's `api_key`; OpenAI's error JSON);
//! * the sideband `GET {realtime_url}?call_id=rtc_...` (WebSocket, GA),
//!   open once the call is accepted;
//! * plain Realtime connections (`?model=`) as usual, so one simulator
//!   serves both call paths.
//!
//! [`SipConnector::place_call`] plays the phone network: it sends a signed
//! `realtime.call.incoming` webhook (Standard Webhooks) to the configured URL.
//! After `accept`, the call's [`SipCallerScript`] starts when the first
//! sideband attaches: speech (`input_audio_buffer.speech_started` /
//! `speech_stopped` / `committed`, transcription, then the scripted model
//! reply per [`RealtimeSimConfig::replies`] and
//! [`RealtimeSimConfig::tool_calls`]), DTMF
//! (`input_audio_buffer.dtmf_event_received`) and hang-up (the server closes
//! the sideband, code 1000).
//!
//! On the sideband no audio flows (it goes over SIP): responses carry
//! transcript deltas and the response lifecycle, plus
//! `output_audio_buffer.started` / `.stopped` / `.cleared` (documented as
//! "WebRTC/SIP only" in the openai package's `realtime_server_event.py`).
//! Playback runs on the simulator's clock (`speed`), so `.stopped` follows
//! `response.done` directly.
//!
//! Known simplifications: the conversation lives in the sideband connection
//! (a reconnecting sideband starts a fresh conversation); the script waits
//! for the first sideband; texts of errors about call states are the
//! simulator's own (the status codes follow the docs: 404 for a call that is
//! gone).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use rand::Rng as _;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::{mpsc, watch};

use crate::realtime::{
    ApiError, CallProgress, DEFAULT_MODEL, RealtimeSim, RealtimeSimConfig, SidebandAttach,
    SidebandCmd, SidebandHost, apply_session_update, check_bearer, default_session, lock,
};

/// The host in the `To` header of incoming calls (by default).
pub const DEFAULT_SIP_DOMAIN: &str = "sip.api.openai.com";

/// Timestamps further than this from now fail Standard Webhooks verification.
pub const WEBHOOK_TOLERANCE_SECS: i64 = 300;

// ---------------------------------------------------------------------------
// Configuration and script
// ---------------------------------------------------------------------------

/// Configuration of a [`SipConnector`].
#[derive(Debug, Clone)]
pub struct SipConnectorConfig {
    /// The simulated model (replies, caller transcripts, tool calls, speed)
    /// and the API key checked on the REST API and the sideband
    /// (`realtime.api_key`; `None` accepts anything).
    pub realtime: RealtimeSimConfig,
    /// Where `realtime.call.incoming` webhooks go (voxbridge's
    /// `/openai/webhook`); can be set later with
    /// [`SipConnector::set_webhook_url`].
    pub webhook_url: Option<String>,
    /// The `whsec_...` signing secret (default: random 32 bytes).
    pub webhook_secret: String,
    /// Host of the `To` header's SIP URI.
    pub sip_domain: String,
    /// Timeout of one webhook delivery.
    pub webhook_timeout_ms: u64,
}

impl Default for SipConnectorConfig {
    fn default() -> Self {
        SipConnectorConfig {
            realtime: RealtimeSimConfig::default(),
            webhook_url: None,
            webhook_secret: random_webhook_secret(),
            sip_domain: DEFAULT_SIP_DOMAIN.to_string(),
            webhook_timeout_ms: 10_000,
        }
    }
}

/// What the caller does once the call is accepted and the first sideband
/// has attached.
#[derive(Debug, Clone, PartialEq)]
pub enum SipStep {
    /// The caller talks for `ms`: `speech_started` now, `speech_stopped`,
    /// `committed` and (when the session transcribes) the transcription
    /// `transcript` after `ms`; then the model replies when turn detection
    /// has `create_response` (the default).
    Speak { transcript: String, ms: u64 },
    /// A keypad press (`0-9`, `*`, `#`, `A-D`):
    /// `input_audio_buffer.dtmf_event_received`.
    Dtmf { digit: String },
    /// Pause.
    Wait { ms: u64 },
    /// Wait until a response has finished (completed or cancelled) since
    /// the caller's last action or the last such wait, and none is in
    /// progress; give up after `timeout_ms`.
    WaitAgentDone { timeout_ms: u64 },
    /// The caller hangs up: state `Ended`, the sideband is closed.
    Hangup,
}

/// The caller's side of a SIP call. Builder:
/// `SipCallerScript::default().wait_agent(5_000).speak("Hi", 800).wait_agent(5_000).hangup()`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SipCallerScript {
    pub steps: Vec<SipStep>,
}

impl SipCallerScript {
    pub fn new(steps: Vec<SipStep>) -> Self {
        SipCallerScript { steps }
    }
    pub fn speak(mut self, transcript: impl Into<String>, ms: u64) -> Self {
        self.steps.push(SipStep::Speak {
            transcript: transcript.into(),
            ms,
        });
        self
    }
    pub fn dtmf(mut self, digit: impl Into<String>) -> Self {
        self.steps.push(SipStep::Dtmf {
            digit: digit.into(),
        });
        self
    }
    pub fn wait(mut self, ms: u64) -> Self {
        self.steps.push(SipStep::Wait { ms });
        self
    }
    pub fn wait_agent(mut self, timeout_ms: u64) -> Self {
        self.steps.push(SipStep::WaitAgentDone { timeout_ms });
        self
    }
    pub fn hangup(mut self) -> Self {
        self.steps.push(SipStep::Hangup);
        self
    }
}

/// An incoming call to place (see [`SipConnector::place_call_with`]).
#[derive(Debug, Clone, Default)]
pub struct PlaceCall {
    /// The dialled number (`+1...`) or a full `sip:` URI.
    pub to: String,
    /// The caller's number (`+1...`) or a full `sip:` URI.
    pub from: String,
    /// Display name in the `From` header (`"Ana" <sip:...>`).
    pub display_name: Option<String>,
    /// More SIP headers (e.g. `X-Conference-Name`), after the standard ones.
    pub extra_headers: Vec<(String, String)>,
    pub script: SipCallerScript,
}

// ---------------------------------------------------------------------------
// Inspection
// ---------------------------------------------------------------------------

/// Where a call stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SipCallState {
    /// Webhook sent, not yet accepted or rejected.
    Incoming,
    /// Accepted: the sideband may attach.
    Accepted,
    /// `/reject` before accept.
    Rejected,
    /// `/refer`: the AI leg is over, the caller was transferred.
    Referred,
    /// `/hangup`.
    HungUp,
    /// The caller hung up (script `Hangup` or [`SipConnector::caller_hangup`]).
    Ended,
}

impl SipCallState {
    /// Whether the call is gone (the Calls API answers 404).
    pub fn is_over(self) -> bool {
        !matches!(self, SipCallState::Incoming | SipCallState::Accepted)
    }
}

/// How a webhook delivery is made (see [`SipConnector::deliver_webhook`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookKind {
    /// The first delivery of [`SipConnector::place_call`].
    Original,
    /// What the service does on retry: same `webhook-id` and body, signed
    /// with a fresh timestamp.
    Redelivery,
    /// A replay attack: the first delivery's exact headers and body.
    Replay,
    /// A different body (another `call_id`) under the original's id and a
    /// valid signature of the original body.
    Tampered,
    /// Correctly signed, but timestamped 10 minutes ago.
    Expired,
    /// Signed with another secret.
    WrongSecret,
}

/// One webhook delivery attempt.
#[derive(Debug, Clone)]
pub struct SipWebhookDelivery {
    pub kind: WebhookKind,
    pub webhook_id: String,
    pub timestamp: i64,
    /// The `webhook-signature` header (`v1,<base64>`).
    pub signature: String,
    /// The exact body sent.
    pub body: String,
    /// The response status, `None` when the request failed.
    pub status: Option<u16>,
    pub response_body: String,
    pub error: Option<String>,
    pub sent_at: Instant,
    /// Until the response (or the failure).
    pub latency: Duration,
}

/// One request to the Calls REST API.
#[derive(Debug, Clone)]
pub struct SipApiRequest {
    pub call_id: String,
    /// `accept`, `reject`, `refer` or `hangup`.
    pub action: String,
    /// The JSON body, `None` when empty.
    pub body: Option<Value>,
    pub status: u16,
    pub at: Instant,
}

/// A snapshot of one call.
#[derive(Debug, Clone)]
pub struct SipCall {
    pub call_id: String,
    pub state: SipCallState,
    pub to: String,
    pub from: String,
    /// As in the webhook's `data.sip_headers`.
    pub sip_headers: Vec<(String, String)>,
    pub event_id: String,
    pub webhook_id: String,
    /// The webhook body as signed.
    pub webhook_body: String,
    pub deliveries: Vec<SipWebhookDelivery>,
    /// Every Calls API request for this call, in order.
    pub requests: Vec<SipApiRequest>,
    /// The body of the successful accept.
    pub accept_body: Option<Value>,
    /// From the first webhook delivery's start to the successful accept.
    pub accepted_after: Option<Duration>,
    /// The effective session (the accept body over the defaults, G.711 µ-law).
    pub session: Option<Value>,
    pub reject_status: Option<u16>,
    pub refer_target: Option<String>,
    /// Sideband upgrades accepted so far.
    pub sideband_connections: u32,
    /// Sideband connections open now.
    pub sideband_open: u32,
    /// Client events received on the sideband(s), in order.
    pub sideband_client_events: Vec<Value>,
    /// Server events sent on the sideband(s), in order.
    pub sideband_server_events: Vec<Value>,
    /// The caller script ran to its end (or to `Hangup`).
    pub script_finished: bool,
    pub created_at: Instant,
    pub ended_at: Option<Instant>,
}

impl SipCall {
    /// Client events of this `type`.
    pub fn client_events_of_type(&self, ty: &str) -> Vec<&Value> {
        self.sideband_client_events
            .iter()
            .filter(|e| e["type"] == ty)
            .collect()
    }

    /// Server events of this `type`.
    pub fn server_events_of_type(&self, ty: &str) -> Vec<&Value> {
        self.sideband_server_events
            .iter()
            .filter(|e| e["type"] == ty)
            .collect()
    }

    /// `("caller" | "agent", text)` in order: caller transcriptions and the
    /// agent's `response.output_audio_transcript.done`s.
    pub fn transcript(&self) -> Vec<(&'static str, String)> {
        self.sideband_server_events
            .iter()
            .filter_map(|e| {
                let text = e["transcript"].as_str()?.to_string();
                match e["type"].as_str()? {
                    "conversation.item.input_audio_transcription.completed" => {
                        Some(("caller", text))
                    }
                    "response.output_audio_transcript.done" => Some(("agent", text)),
                    _ => None,
                }
            })
            .collect()
    }
}

/// Errors of [`SipConnector`]'s methods.
#[derive(Debug, thiserror::Error)]
pub enum SipError {
    #[error("no webhook URL configured (SipConnector::set_webhook_url)")]
    NoWebhookUrl,
    #[error("unknown call {0}")]
    UnknownCall(String),
    #[error("call {0} has no original delivery to replay")]
    NothingToReplay(String),
    #[error("the webhook secret is not whsec_<base64>")]
    BadSecret,
}

// ---------------------------------------------------------------------------
// Signatures
// ---------------------------------------------------------------------------

/// A fresh `whsec_<base64 of 32 random bytes>` secret.
pub fn random_webhook_secret() -> String {
    let key: [u8; 32] = rand::rng().random();
    format!("whsec_{}", B64.encode(key))
}

/// The HMAC key of a secret: the base64 after `whsec_` (padding optional),
/// or, without the prefix, the secret's bytes (as the openai package does).
pub fn webhook_key(secret: &str) -> Option<Vec<u8>> {
    let key = match secret.strip_prefix("whsec_") {
        Some(b64) => base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(b64.trim_end_matches('='))
            .ok()?,
        None => secret.as_bytes().to_vec(),
    };
    (!key.is_empty()).then_some(key)
}

/// The Standard Webhooks `webhook-signature` value: `v1,` + base64 of
/// HMAC-SHA256(key, `"{id}.{timestamp}.{body}"`).
pub fn sign_webhook(secret: &str, webhook_id: &str, timestamp: i64, body: &str) -> Option<String> {
    let key = webhook_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{webhook_id}.{timestamp}.{body}").as_bytes());
    Some(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn hex_id(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::rng().random();
    let mut s = String::with_capacity(prefix.len() + 32);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The Calls API forbids these in the session (the audio format is
/// negotiated over SIP; VAD tuning fields give a 400 "Unknown parameter").
/// The first one present, as an API parameter path.
pub(crate) fn forbidden_sip_field(session: &Value) -> Option<String> {
    for dir in ["input", "output"] {
        if session.pointer(&format!("/audio/{dir}/format")).is_some() {
            return Some(format!("session.audio.{dir}.format"));
        }
    }
    let td = session.pointer("/audio/input/turn_detection");
    for f in ["threshold", "prefix_padding_ms", "silence_duration_ms"] {
        if td.and_then(|t| t.get(f)).is_some() {
            return Some(format!("session.audio.input.turn_detection.{f}"));
        }
    }
    None
}

// ---------------------------------------------------------------------------
// The connector
// ---------------------------------------------------------------------------

/// A running SIP connector emulator (and its Realtime simulator).
pub struct SipConnector {
    sim: RealtimeSim,
    reg: Arc<Registry>,
}

impl SipConnector {
    /// Bind `127.0.0.1:0` and start serving.
    pub async fn start(cfg: SipConnectorConfig) -> std::io::Result<SipConnector> {
        Self::start_on("127.0.0.1:0", cfg).await
    }

    /// Bind `addr` and start serving.
    pub async fn start_on(
        addr: impl tokio::net::ToSocketAddrs,
        cfg: SipConnectorConfig,
    ) -> std::io::Result<SipConnector> {
        if webhook_key(&cfg.webhook_secret).is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                SipError::BadSecret.to_string(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.webhook_timeout_ms.max(1)))
            .build()
            .map_err(std::io::Error::other)?;
        let reg = Arc::new(Registry {
            api_key: cfg.realtime.api_key.clone(),
            secret: cfg.webhook_secret,
            sip_domain: cfg.sip_domain,
            webhook_url: Mutex::new(cfg.webhook_url),
            calls: Mutex::new(Calls::default()),
            unknown: Mutex::new(Vec::new()),
            http,
            next_token: AtomicU64::new(1),
            changed: watch::channel(0).0,
        });
        let router = Router::new()
            .route("/v1/realtime/calls/{call_id}/{action}", post(calls_api))
            .fallback(invalid_url)
            .with_state(reg.clone());
        let host: Arc<dyn SidebandHost> = reg.clone();
        let sim = RealtimeSim::start_with_sip(addr, cfg.realtime, host, router).await?;
        Ok(SipConnector { sim, reg })
    }

    /// `http://127.0.0.1:PORT/v1` (voxbridge's `OPENAI_API_BASE`).
    pub fn api_base(&self) -> String {
        format!("http://{}/v1", self.sim.local_addr())
    }

    /// `ws://127.0.0.1:PORT/v1/realtime` (voxbridge's `OPENAI_REALTIME_URL`;
    /// serves `?model=` sessions and `?call_id=` sidebands).
    pub fn realtime_url(&self) -> String {
        self.sim.ws_url()
    }

    /// The sideband URL of a call.
    pub fn sideband_url(&self, call_id: &str) -> String {
        format!("{}?call_id={call_id}", self.sim.ws_url())
    }

    /// The Realtime simulator behind it: events, function calls, tool
    /// outputs, notices, connections (path A and sidebands alike).
    pub fn sim(&self) -> &RealtimeSim {
        &self.sim
    }

    /// The `whsec_...` secret webhooks are signed with.
    pub fn webhook_secret(&self) -> &str {
        &self.reg.secret
    }

    /// Where webhooks go from now on.
    pub fn set_webhook_url(&self, url: impl Into<String>) {
        *lock(&self.reg.webhook_url) = Some(url.into());
    }

    /// A call from `from` to `to` (numbers or `sip:` URIs): sends the signed
    /// `realtime.call.incoming` webhook and waits for the response. Returns
    /// the `call_id` whatever the webhook's outcome (see
    /// [`SipCall::deliveries`]).
    pub async fn place_call(
        &self,
        to: &str,
        from: &str,
        script: SipCallerScript,
    ) -> Result<String, SipError> {
        self.place_call_with(PlaceCall {
            to: to.to_string(),
            from: from.to_string(),
            script,
            ..PlaceCall::default()
        })
        .await
    }

    /// [`SipConnector::place_call`] with a display name and extra SIP headers.
    pub async fn place_call_with(&self, call: PlaceCall) -> Result<String, SipError> {
        if lock(&self.reg.webhook_url).is_none() {
            return Err(SipError::NoWebhookUrl);
        }
        let call_id = self.reg.new_call(call);
        self.reg.deliver(&call_id, WebhookKind::Original).await?;
        Ok(call_id)
    }

    /// Send the call's webhook again, as `kind` says (redelivery, replay,
    /// tampered, expired, wrong secret).
    pub async fn deliver_webhook(
        &self,
        call_id: &str,
        kind: WebhookKind,
    ) -> Result<SipWebhookDelivery, SipError> {
        self.reg.deliver(call_id, kind).await
    }

    /// The caller hangs up now. `false` when the call was already over.
    pub fn caller_hangup(&self, call_id: &str) -> bool {
        self.reg.caller_hangup(call_id)
    }

    /// Every call, in the order placed.
    pub fn calls(&self) -> Vec<SipCall> {
        let calls = lock(&self.reg.calls);
        calls
            .order
            .iter()
            .filter_map(|id| calls.map.get(id).map(|e| e.info.clone()))
            .collect()
    }

    pub fn call(&self, call_id: &str) -> Option<SipCall> {
        lock(&self.reg.calls)
            .map
            .get(call_id)
            .map(|e| e.info.clone())
    }

    /// Calls API requests naming a call that does not exist (all 404).
    pub fn unknown_call_requests(&self) -> Vec<SipApiRequest> {
        lock(&self.reg.unknown).clone()
    }

    /// Wait until `pred` holds for the call (snapshot), or `timeout`.
    pub async fn wait_for(
        &self,
        call_id: &str,
        timeout: Duration,
        pred: impl Fn(&SipCall) -> bool,
    ) -> Option<SipCall> {
        let mut rx = self.reg.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.call(call_id)
                && pred(&c)
            {
                return Some(c);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return self.call(call_id).filter(|c| pred(c)),
            }
        }
    }

    /// Stop serving (closes every connection).
    pub async fn shutdown(self) {
        {
            let mut calls = lock(&self.reg.calls);
            for e in calls.map.values_mut() {
                if let Some(r) = e.runner.take() {
                    r.abort();
                }
            }
        }
        self.sim.shutdown().await;
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

struct Registry {
    api_key: Option<String>,
    secret: String,
    sip_domain: String,
    webhook_url: Mutex<Option<String>>,
    calls: Mutex<Calls>,
    unknown: Mutex<Vec<SipApiRequest>>,
    http: reqwest::Client,
    next_token: AtomicU64,
    /// Bumped on every change, for [`SipConnector::wait_for`].
    changed: watch::Sender<u64>,
}

#[derive(Default)]
struct Calls {
    map: HashMap<String, CallEntry>,
    order: Vec<String>,
}

struct CallEntry {
    info: SipCall,
    script: Option<SipCallerScript>,
    /// (timestamp, signature) of the original delivery.
    first_headers: Option<(i64, String)>,
    first_sent: Option<Instant>,
    sidebands: Vec<(u64, mpsc::UnboundedSender<SidebandCmd>)>,
    progress: Arc<watch::Sender<CallProgress>>,
    runner: Option<tokio::task::AbortHandle>,
}

impl CallEntry {
    /// The call is over: new state, sidebands closed, script stopped.
    fn end(&mut self, state: SipCallState, reason: &'static str) {
        self.info.state = state;
        self.info.ended_at = Some(Instant::now());
        for (_, tx) in self.sidebands.drain(..) {
            let _ = tx.send(SidebandCmd::End { reason });
        }
        if let Some(r) = self.runner.take() {
            r.abort();
        }
    }
}

fn sip_uri(number_or_uri: &str, host: &str) -> String {
    if number_or_uri.starts_with("sip:") || number_or_uri.starts_with("sips:") {
        number_or_uri.to_string()
    } else {
        format!("sip:{number_or_uri}@{host}")
    }
}

impl Registry {
    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn new_call(&self, call: PlaceCall) -> String {
        let call_id = hex_id("rtc_u1_");
        let tag: u32 = rand::rng().random();
        let from_uri = sip_uri(&call.from, "pstn.twilio.com");
        let from = match &call.display_name {
            Some(name) => format!("\"{name}\" <{from_uri}>;tag={tag:08x}"),
            None => format!("<{from_uri}>;tag={tag:08x}"),
        };
        let to = format!("<{}>", sip_uri(&call.to, &self.sip_domain));
        let mut sip_headers = vec![
            ("From".to_string(), from),
            ("To".to_string(), to),
            (
                "Call-ID".to_string(),
                format!("{}@pstn.twilio.com", hex_id("")),
            ),
        ];
        sip_headers.extend(call.extra_headers.iter().cloned());
        let event_id = hex_id("evt_");
        let webhook_id = hex_id("wh_");
        let body = json!({
            "id": event_id,
            "object": "event",
            "created_at": unix_now(),
            "type": "realtime.call.incoming",
            "data": {
                "call_id": call_id,
                "sip_headers": sip_headers.iter()
                    .map(|(n, v)| json!({"name": n, "value": v}))
                    .collect::<Vec<_>>(),
                "sip_media_security": "srtp",
            },
        })
        .to_string();
        let info = SipCall {
            call_id: call_id.clone(),
            state: SipCallState::Incoming,
            to: call.to,
            from: call.from,
            sip_headers,
            event_id,
            webhook_id,
            webhook_body: body,
            deliveries: Vec::new(),
            requests: Vec::new(),
            accept_body: None,
            accepted_after: None,
            session: None,
            reject_status: None,
            refer_target: None,
            sideband_connections: 0,
            sideband_open: 0,
            sideband_client_events: Vec::new(),
            sideband_server_events: Vec::new(),
            script_finished: false,
            created_at: Instant::now(),
            ended_at: None,
        };
        let mut calls = lock(&self.calls);
        calls.order.push(call_id.clone());
        calls.map.insert(
            call_id.clone(),
            CallEntry {
                info,
                script: Some(call.script),
                first_headers: None,
                first_sent: None,
                sidebands: Vec::new(),
                progress: Arc::new(watch::channel(CallProgress::default()).0),
                runner: None,
            },
        );
        drop(calls);
        self.bump();
        call_id
    }

    async fn deliver(
        &self,
        call_id: &str,
        kind: WebhookKind,
    ) -> Result<SipWebhookDelivery, SipError> {
        let url = lock(&self.webhook_url)
            .clone()
            .ok_or(SipError::NoWebhookUrl)?;
        let now = unix_now();
        let sign = |secret: &str, ts: i64, body: &str, id: &str| {
            sign_webhook(secret, id, ts, body).ok_or(SipError::BadSecret)
        };
        let (id, timestamp, signature, body) = {
            let mut calls = lock(&self.calls);
            let e = calls
                .map
                .get_mut(call_id)
                .ok_or_else(|| SipError::UnknownCall(call_id.to_string()))?;
            let id = e.info.webhook_id.clone();
            let body = e.info.webhook_body.clone();
            let (ts, sig, sent) = match kind {
                WebhookKind::Original | WebhookKind::Redelivery => {
                    (now, sign(&self.secret, now, &body, &id)?, body)
                }
                WebhookKind::Replay => {
                    let (ts, sig) = e
                        .first_headers
                        .clone()
                        .ok_or_else(|| SipError::NothingToReplay(call_id.to_string()))?;
                    (ts, sig, body)
                }
                WebhookKind::Tampered => {
                    let sig = sign(&self.secret, now, &body, &id)?;
                    (now, sig, body.replace(call_id, &hex_id("rtc_u1_")))
                }
                WebhookKind::Expired => {
                    let ts = now - 2 * WEBHOOK_TOLERANCE_SECS;
                    (ts, sign(&self.secret, ts, &body, &id)?, body)
                }
                WebhookKind::WrongSecret => {
                    (now, sign(&random_webhook_secret(), now, &body, &id)?, body)
                }
            };
            if kind == WebhookKind::Original && e.first_headers.is_none() {
                // Set before sending: the accept may arrive before the
                // webhook's response.
                e.first_headers = Some((ts, sig.clone()));
                e.first_sent = Some(Instant::now());
            }
            (id, ts, sig, sent)
        };
        let sent_at = Instant::now();
        let r = self
            .http
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", &signature)
            .body(body.clone())
            .send()
            .await;
        let (status, response_body, error) = match r {
            Ok(resp) => {
                let status = resp.status().as_u16();
                match resp.text().await {
                    Ok(t) => (Some(status), t, None),
                    Err(e) => (Some(status), String::new(), Some(e.to_string())),
                }
            }
            Err(e) => (None, String::new(), Some(e.to_string())),
        };
        let d = SipWebhookDelivery {
            kind,
            webhook_id: id,
            timestamp,
            signature,
            body,
            status,
            response_body,
            error,
            sent_at,
            latency: sent_at.elapsed(),
        };
        if let Some(e) = lock(&self.calls).map.get_mut(call_id) {
            e.info.deliveries.push(d.clone());
        }
        self.bump();
        Ok(d)
    }

    fn caller_hangup(&self, call_id: &str) -> bool {
        let mut calls = lock(&self.calls);
        let Some(e) = calls.map.get_mut(call_id) else {
            return false;
        };
        if e.info.state.is_over() {
            return false;
        }
        e.end(SipCallState::Ended, "call ended");
        e.info.script_finished = true;
        drop(calls);
        self.bump();
        true
    }

    fn to_sidebands(&self, call_id: &str, cmd: SidebandCmd) {
        let mut calls = lock(&self.calls);
        if let Some(e) = calls.map.get_mut(call_id) {
            e.sidebands.retain(|(_, tx)| tx.send(cmd.clone()).is_ok());
        }
    }

    /// A Calls API request, under the lock: the status and the response body.
    fn handle(
        self: &Arc<Self>,
        call_id: &str,
        action: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Option<Value>) {
        let mut calls = lock(&self.calls);
        let Some(e) = calls.map.get_mut(call_id) else {
            drop(calls);
            lock(&self.unknown).push(SipApiRequest {
                call_id: call_id.to_string(),
                action: action.to_string(),
                body: body.cloned(),
                status: 404,
                at: Instant::now(),
            });
            return (StatusCode::NOT_FOUND, Some(not_found(call_id)));
        };
        let state = e.info.state;
        let r = if state.is_over() {
            Err((StatusCode::NOT_FOUND, not_found(call_id)))
        } else {
            match action {
                "accept" => self.accept(e, call_id, body),
                "reject" => reject(e, body),
                "refer" => refer(e, body),
                _ => {
                    e.end(SipCallState::HungUp, "call hung up");
                    Ok(())
                }
            }
        };
        let (status, out) = match r {
            Ok(()) => (StatusCode::OK, None),
            Err((s, v)) => (s, Some(v)),
        };
        e.info.requests.push(SipApiRequest {
            call_id: call_id.to_string(),
            action: action.to_string(),
            body: body.cloned(),
            status: status.as_u16(),
            at: Instant::now(),
        });
        drop(calls);
        self.bump();
        (status, out)
    }

    fn accept(
        self: &Arc<Self>,
        e: &mut CallEntry,
        call_id: &str,
        body: Option<&Value>,
    ) -> Result<(), (StatusCode, Value)> {
        if e.info.state == SipCallState::Accepted {
            return Err(bad_request(
                &format!("Call '{call_id}' has already been accepted."),
                None,
                None,
            ));
        }
        let session = accept_session(body)
            .map_err(|err| bad_request(&err.message, Some(err.code), err.param.as_deref()))?;
        e.info.state = SipCallState::Accepted;
        e.info.accept_body = body.cloned();
        e.info.session = Some(session);
        e.info.accepted_after = e.first_sent.map(|t| t.elapsed());
        let script = e.script.take().unwrap_or_default();
        let progress = e.progress.subscribe();
        let task = tokio::spawn(run_script(
            Arc::downgrade(self),
            call_id.to_string(),
            script,
            progress,
        ));
        e.runner = Some(task.abort_handle());
        Ok(())
    }
}

fn reject(e: &mut CallEntry, body: Option<&Value>) -> Result<(), (StatusCode, Value)> {
    if e.info.state == SipCallState::Accepted {
        return Err(bad_request(
            "Only a call that has not been accepted can be rejected; use hangup.",
            None,
            None,
        ));
    }
    let code = match body.and_then(|b| b.get("status_code")) {
        None | Some(Value::Null) => 603,
        Some(v) => match v.as_u64() {
            Some(c @ 400..=699) => c as u16,
            _ => {
                return Err(bad_request(
                    &format!(
                        "Invalid 'status_code': expected a SIP final response code between 400 and 699, but got {v} instead."
                    ),
                    Some("invalid_value"),
                    Some("status_code"),
                ));
            }
        },
    };
    e.info.reject_status = Some(code);
    e.end(SipCallState::Rejected, "call rejected");
    Ok(())
}

fn refer(e: &mut CallEntry, body: Option<&Value>) -> Result<(), (StatusCode, Value)> {
    if e.info.state != SipCallState::Accepted {
        return Err(bad_request(
            "Only an accepted call can be referred.",
            None,
            None,
        ));
    }
    let target = match body.and_then(|b| b.get("target_uri")) {
        None | Some(Value::Null) => {
            let err = ApiError::missing("target_uri");
            return Err(bad_request(
                &err.message,
                Some(err.code),
                Some("target_uri"),
            ));
        }
        Some(Value::String(t)) => t.clone(),
        Some(v) => {
            let err = ApiError::invalid_type("target_uri", "a string", v);
            return Err(bad_request(
                &err.message,
                Some(err.code),
                Some("target_uri"),
            ));
        }
    };
    let ok = ["tel:", "sip:", "sips:"]
        .iter()
        .any(|p| target.starts_with(p) && target.len() > p.len());
    if !ok {
        return Err(bad_request(
            &format!(
                "Invalid 'target_uri': expected a tel: or sip: URI, but got '{target}' instead."
            ),
            Some("invalid_value"),
            Some("target_uri"),
        ));
    }
    e.info.refer_target = Some(target);
    e.end(SipCallState::Referred, "call referred");
    Ok(())
}

/// Validate an accept body the way the Calls API does; the effective session.
fn accept_session(body: Option<&Value>) -> Result<Value, ApiError> {
    let Some(body) = body else {
        return Err(ApiError::missing("session.type"));
    };
    if let Some(param) = forbidden_sip_field(body) {
        return Err(ApiError::unknown(&param));
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_MODEL);
    let mut base = default_session(model);
    for dir in ["input", "output"] {
        if let Some(f) = base.pointer_mut(&format!("/audio/{dir}/format")) {
            // Negotiated over SIP: G.711 µ-law.
            *f = json!({"type": "audio/pcmu"});
        }
    }
    apply_session_update(&base, body, false)
}

fn error_body(message: &str, code: Option<&str>, param: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": "invalid_request_error",
        "param": param, "code": code}})
}

fn bad_request(message: &str, code: Option<&str>, param: Option<&str>) -> (StatusCode, Value) {
    (StatusCode::BAD_REQUEST, error_body(message, code, param))
}

fn not_found(call_id: &str) -> Value {
    error_body(&format!("Call '{call_id}' not found."), None, None)
}

impl SidebandHost for Registry {
    fn attach(&self, call_id: &str) -> Result<SidebandAttach, (StatusCode, Value)> {
        let mut calls = lock(&self.calls);
        let Some(e) = calls.map.get_mut(call_id) else {
            return Err((StatusCode::NOT_FOUND, not_found(call_id)));
        };
        match e.info.state {
            SipCallState::Accepted => {}
            SipCallState::Incoming => {
                return Err(bad_request(
                    &format!("Call '{call_id}' has not been accepted."),
                    None,
                    Some("call_id"),
                ));
            }
            _ => return Err((StatusCode::NOT_FOUND, not_found(call_id))),
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::unbounded_channel();
        e.sidebands.push((token, tx));
        e.info.sideband_connections += 1;
        e.info.sideband_open += 1;
        e.progress.send_modify(|p| p.attaches += 1);
        let attach = SidebandAttach {
            call_id: call_id.to_string(),
            token,
            session: e.info.session.clone().unwrap_or(Value::Null),
            cmds: rx,
            progress: e.progress.clone(),
        };
        drop(calls);
        self.bump();
        Ok(attach)
    }

    fn detached(&self, call_id: &str, token: u64) {
        if let Some(e) = lock(&self.calls).map.get_mut(call_id) {
            e.sidebands.retain(|(t, _)| *t != token);
            e.info.sideband_open = e.info.sideband_open.saturating_sub(1);
        }
        self.bump();
    }

    fn client_event(&self, call_id: &str, ev: &Value) {
        if let Some(e) = lock(&self.calls).map.get_mut(call_id) {
            e.info.sideband_client_events.push(ev.clone());
        }
        self.bump();
    }

    fn server_event(&self, call_id: &str, ev: &Value) {
        if let Some(e) = lock(&self.calls).map.get_mut(call_id) {
            e.info.sideband_server_events.push(ev.clone());
        }
        self.bump();
    }
}

// ---------------------------------------------------------------------------
// The caller script
// ---------------------------------------------------------------------------

/// Runs the caller's script. Holds the registry weakly, so a dropped
/// connector ends it (its progress channel closes).
async fn run_script(
    reg: Weak<Registry>,
    call_id: String,
    script: SipCallerScript,
    mut progress: watch::Receiver<CallProgress>,
) {
    let send = |cmd: SidebandCmd| {
        if let Some(reg) = reg.upgrade() {
            reg.to_sidebands(&call_id, cmd);
        }
    };
    if progress.wait_for(|p| p.attaches > 0).await.is_err() {
        return;
    }
    let mut mark = 0u64;
    for step in script.steps {
        match step {
            SipStep::Speak { transcript, ms } => {
                send(SidebandCmd::SpeechStarted);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                send(SidebandCmd::SpeechStopped { transcript });
                mark = progress.borrow().responses_done;
            }
            SipStep::Dtmf { digit } => {
                send(SidebandCmd::Dtmf { digit });
                mark = progress.borrow().responses_done;
            }
            SipStep::Wait { ms } => tokio::time::sleep(Duration::from_millis(ms)).await,
            SipStep::WaitAgentDone { timeout_ms } => {
                let _ = tokio::time::timeout(
                    Duration::from_millis(timeout_ms),
                    progress.wait_for(|p| p.responses_done > mark && p.responses_active == 0),
                )
                .await;
                mark = progress.borrow().responses_done;
            }
            SipStep::Hangup => {
                // Ends the call, which aborts this task.
                if let Some(reg) = reg.upgrade() {
                    reg.caller_hangup(&call_id);
                }
                return;
            }
        }
    }
    if let Some(reg) = reg.upgrade() {
        if let Some(e) = lock(&reg.calls).map.get_mut(&call_id) {
            e.info.script_finished = true;
        }
        reg.bump();
    }
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn calls_api(
    State(reg): State<Arc<Registry>>,
    Path((call_id, action)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(err) = check_bearer(auth, reg.api_key.as_deref()) {
        return json_response(StatusCode::UNAUTHORIZED, err);
    }
    if !matches!(action.as_str(), "accept" | "reject" | "refer" | "hangup") {
        return invalid_url(method, uri).await;
    }
    let body: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    error_body(
                        &format!(
                            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.) Parse error: {e}"
                        ),
                        Some("invalid_json"),
                        None,
                    ),
                );
            }
        }
    };
    if let Some(b) = &body
        && !b.is_object()
    {
        let err = ApiError::invalid_type("body", "an object", b);
        return json_response(
            StatusCode::BAD_REQUEST,
            error_body(&err.message, Some(err.code), None),
        );
    }
    match reg.handle(&call_id, &action, body.as_ref()) {
        (status, Some(v)) => json_response(status, v),
        (status, None) => status.into_response(),
    }
}

async fn invalid_url(method: Method, uri: Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        error_body(
            &format!("Invalid URL ({method} {})", uri.path()),
            None,
            None,
        ),
    )
}
