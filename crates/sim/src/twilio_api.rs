//! An emulated Twilio REST API (`2010-04-01`) for outbound calls: create, update
//! (hang up / redirect) and fetch a call, with Twilio's status callbacks, AMD and
//! recording callbacks, and the call itself played by [`crate::caller`].
//!
//! Point voxbridge's `TWILIO_API_BASE` at [`TwilioEmulator::base_url`].
//!
//! # What a created call does
//!
//! `POST …/Calls.json` answers `201` at once with `status: queued`; a background
//! task then "dials":
//!
//! * `initiated` (~10 ms), then `ringing` (~50 ms later), except [`Outcome::Fail`]
//!   which goes `initiated` → `failed` without ringing;
//! * [`Outcome::Busy`]: `busy` ~100 ms after ringing; [`Outcome::NoAnswer`]:
//!   `no-answer` after `ring_ms` (also an answering outcome whose `ring_ms` is not
//!   below the `Timeout` parameter);
//! * answering outcomes: `in-progress` after `ring_ms` (status callback event
//!   `answered`), the TwiML is taken from `Twiml` or fetched from `Url` (signed
//!   voice webhook, `Method` GET or POST), and its `<Connect><Stream>` is played by
//!   [`crate::caller::run_call_with`] with the outcome's script;
//! * when the media session ends, the final status (`completed`, or whatever an
//!   update already decided) goes out as the `completed` event, then the
//!   recording callback.
//!
//! Status callbacks are sent in order, one at a time; a callback that fails
//! (unreachable, timeout, non-2xx) is recorded and never stops the call.
//!
//! # When the application is down
//!
//! The emulator outlives a voxbridge node that dies (`kill -9`) with calls in
//! flight, and ends them the way Twilio does:
//!
//! * a voice webhook that cannot be fetched after the callee answered: Twilio
//!   plays "an application error has occurred" and hangs up, so the call is
//!   `completed` (it was answered; Twilio error 11200), with
//!   [`EmulatedCall::error`] saying why;
//! * a media WebSocket that drops (or cannot be opened): `<Connect><Stream>`
//!   ends, there is no next verb, the call is `completed`;
//! * status and recording callbacks that fail are recorded on the call
//!   ([`SentCallback::error`]) and change nothing else.
//!
//! Nothing of this panics, and [`TwilioEmulator::calls`] keeps reporting the
//! calls.
//!
//! # Listing calls
//!
//! `GET …/Calls.json` returns calls newest first and honours Twilio's filters
//! `To`, `From`, `Status`, `StartTime`, `StartTime<`, `StartTime>`, `EndTime`,
//! `EndTime<`, `EndTime>` (a date `YYYY-MM-DD` in UTC, or an instant
//! `YYYY-MM-DDTHH:MM:SSZ`; sent on the wire as e.g. `StartTime%3E=2026-11-21`),
//! with day granularity: `StartTime=D` is "started on day D", `StartTime>=D` "at
//! or after midnight of D", `StartTime<=D` "at or before midnight of D".
//! A call that was never dialed (still `queued`, or canceled while queued) has
//! no `start_time` and matches **no** `StartTime` filter, as on Twilio, whose
//! filters apply to `start_time`. Paging: `PageSize` (1..=1000, default 50),
//! `Page`, and `PageToken` (`PA<sid>`: calls created before that call;
//! `PB<sid>`: the page just newer than it), so `next_page_uri` stays correct
//! while new calls are created between pages.
//!
//! # Faults
//!
//! [`TwilioEmulatorConfig::create_faults`] (or [`TwilioEmulator::add_create_fault`]
//! at run time) makes `POST …/Calls.json` to a given `To` lose its response
//! after creating the call, or reject it, a set number of times: see
//! [`CreateFault`]. [`TwilioEmulator::set_outcome`] changes what a number does
//! for calls created afterwards.
//!
//! # Reaching the webhooks
//!
//! The emulator speaks plain HTTP only. An `https://` URL (voice `Url`, status,
//! AMD or recording callback) is sent to [`TwilioEmulatorConfig::webhook_base`]
//! followed by its path and query when that is set (still signed over the original URL);
//! without it the request fails and is recorded as failed. The media WebSocket
//! is reached at `connect_base`, by default derived from the reachable voice URL
//! (`http` → `ws`, `https` → `wss`, same host and port) or, for `Twiml`, from
//! `webhook_base`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use voxbridge_twilio::signature::{SIGNATURE_HEADER, compute_signature};

use crate::caller::{self, CallerConfig, CallerReport, CallerStep, RunOptions};

const API_VERSION: &str = "2010-04-01";
/// Timeout of one callback / voice webhook request (Twilio's is 15 s).
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
const INITIATE_MS: u64 = 10;
const RING_AFTER_MS: u64 = 50;
const BUSY_AFTER_MS: u64 = 100;
const FAIL_AFTER_MS: u64 = 50;
const AMD_AFTER_MS: u64 = 200;
const FINAL_STATUSES: [&str; 5] = ["completed", "busy", "no-answer", "failed", "canceled"];
/// Twilio's `call_enum_status` (the values `Status` may filter on).
const CALL_STATUSES: [&str; 8] = [
    "queued",
    "ringing",
    "in-progress",
    "canceled",
    "completed",
    "failed",
    "busy",
    "no-answer",
];
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

/// What happens when the emulator dials a number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answers and plays [`TwilioEmulatorConfig::default_script`].
    Answer,
    /// Answers and plays this script.
    AnswerWithScript(Vec<CallerStep>),
    /// Final status `busy`.
    Busy,
    /// Rings for `ring_ms`, final status `no-answer`.
    NoAnswer,
    /// Final status `failed` (never rings).
    Fail,
    /// Answers (default script); machine detection says `machine_start`.
    Machine,
}

/// What goes wrong with a `POST …/Calls.json` (see [`CreateFaultRule`]). Exists to
/// test at-most-once dialing: the `Lose*`/`Drop*`/`Delay*` faults leave the client
/// unable to know whether (and which) call was placed, although it was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateFault {
    /// The call **is** created and dialed, then the response is lost: HTTP 500 with
    /// Twilio error 20500, no SID in it.
    LoseResponse,
    /// The call **is** created and dialed, then the connection is closed without
    /// any response (recorded with status 0).
    DropConnection,
    /// The call **is** created and dialed at once, but the `201` only comes after
    /// this delay: a client with a shorter timeout gives up first.
    DelayResponse(Duration),
    /// No call is created: HTTP `status` with Twilio error `code` (e.g. `503`/`20503`,
    /// `429`/`20429`, `400`/`21215`).
    Reject { status: u16, code: u32 },
}

/// A [`CreateFault`] for create requests to one `To` number, a set number of times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateFaultRule {
    /// The `To` number (exact match) whose create requests fail.
    pub to: String,
    pub fault: CreateFault,
    /// How many matching create requests get the fault; later ones behave normally.
    /// `u32::MAX` means every time ([`CreateFaultRule::always`]). Only requests that
    /// pass validation count.
    pub times: u32,
}

impl CreateFaultRule {
    /// The next create request to `to` gets `fault`, later ones succeed.
    pub fn once(to: impl Into<String>, fault: CreateFault) -> Self {
        Self::times(to, fault, 1)
    }

    /// The next `n` create requests to `to` get `fault`.
    pub fn times(to: impl Into<String>, fault: CreateFault, n: u32) -> Self {
        Self {
            to: to.into(),
            fault,
            times: n,
        }
    }

    /// Every create request to `to` gets `fault`.
    pub fn always(to: impl Into<String>, fault: CreateFault) -> Self {
        Self::times(to, fault, u32::MAX)
    }
}

/// Configuration of a [`TwilioEmulator`].
#[derive(Clone, Debug)]
pub struct TwilioEmulatorConfig {
    /// e.g. `"AC"` + 32 hex digits; the only account the API serves.
    pub account_sid: String,
    /// Basic auth password of `account_sid`, and the key that signs every webhook.
    pub auth_token: String,
    /// API keys also accepted for Basic auth: (`SK…` sid, secret).
    pub api_keys: Vec<(String, String)>,
    /// What the callee does once connected (outcomes without their own script).
    pub default_script: Vec<CallerStep>,
    /// Per `To` number; numbers not listed [`Outcome::Answer`]. The starting set:
    /// [`TwilioEmulator::set_outcome`] changes it at run time.
    pub outcomes: Vec<(String, Outcome)>,
    /// Faults of create requests, by `To` number; the first rule for the number with
    /// uses left applies. [`TwilioEmulator::add_create_fault`] adds more at run time.
    pub create_faults: Vec<CreateFaultRule>,
    /// Time from ringing to answer (or to `no-answer`), ms.
    pub ring_ms: u64,
    /// e.g. `ws://127.0.0.1:PORT`: where the `<Stream url>`'s host is reached.
    /// Default: derived from the reachable voice URL (see the module docs).
    pub connect_base: Option<String>,
    /// e.g. `http://127.0.0.1:PORT`: where `https://` webhook and callback URLs
    /// are actually sent (path and query kept, signature over the original URL).
    pub webhook_base: Option<String>,
    /// Options of the media session (e.g. `record_audio: false` for load).
    pub run_options: RunOptions,
}

impl Default for TwilioEmulatorConfig {
    fn default() -> Self {
        Self {
            account_sid: format!("AC{}", "0".repeat(32)),
            auth_token: "emulator_auth_token".into(),
            api_keys: Vec::new(),
            default_script: vec![CallerStep::Silence { ms: 1000 }],
            outcomes: Vec::new(),
            create_faults: Vec::new(),
            ring_ms: 300,
            connect_base: None,
            webhook_base: None,
            run_options: RunOptions::default(),
        }
    }
}

/// One REST request the emulator received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Raw query string ("" if none).
    pub query: String,
    /// The Basic auth user name, if a parsable `Authorization: Basic` header was sent.
    pub auth_user: Option<String>,
    /// The form-encoded body's pairs, in order, repeated keys kept.
    pub form: Vec<(String, String)>,
    /// The HTTP status the emulator answered; `0` when the connection was dropped
    /// without a response ([`CreateFault::DropConnection`]).
    pub status: u16,
}

/// Which webhook a [`SentCallback`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackKind {
    /// The voice `Url` (TwiML fetch) when the call was answered.
    Voice,
    /// `StatusCallback` (call progress events).
    Status,
    /// `AsyncAmdStatusCallback`.
    AsyncAmd,
    /// `RecordingStatusCallback`.
    Recording,
}

/// One HTTP request the emulator sent (voice webhook or callback).
#[derive(Clone, Debug)]
pub struct SentCallback {
    pub kind: CallbackKind,
    /// The URL as given by the API caller (for GET: with the params appended);
    /// the signature is over this URL.
    pub url: String,
    /// `GET` or `POST`.
    pub method: String,
    /// The params (form body for POST, query for GET), in the order sent.
    pub form: Vec<(String, String)>,
    /// The `X-Twilio-Signature` sent.
    pub signature: String,
    /// The HTTP status of the response, if one arrived.
    pub status: Option<u16>,
    /// The response body (the TwiML for [`CallbackKind::Voice`]).
    pub response_body: String,
    /// Why the request failed (no response, or a non-2xx status).
    pub error: Option<String>,
    pub at: SystemTime,
}

impl SentCallback {
    /// The value of the first param named `key`.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A 2xx response arrived.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
}

/// One status change of a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    /// `queued` `initiated` `ringing` `in-progress` `completed` `busy` `no-answer` `failed` `canceled`.
    pub status: String,
    pub at: SystemTime,
}

/// Everything the emulator knows about one call.
#[derive(Clone, Debug)]
pub struct EmulatedCall {
    pub sid: String,
    pub to: String,
    pub from: String,
    /// The create request's form, in order.
    pub params: Vec<(String, String)>,
    /// Current status.
    pub status: String,
    pub timeline: Vec<StatusChange>,
    /// Voice webhook and callbacks, in the order they were sent.
    pub callbacks: Vec<SentCallback>,
    /// The forms of the update requests, in order.
    pub updates: Vec<Vec<(String, String)>>,
    pub answered_by: Option<String>,
    pub date_created: SystemTime,
    /// Set when the call is initiated (dialing starts).
    pub start_time: Option<SystemTime>,
    pub answer_time: Option<SystemTime>,
    pub end_time: Option<SystemTime>,
    /// Whole seconds from answer to end (0 when never answered), once ended.
    pub duration: Option<u64>,
    /// `RE…` when a recording callback was due.
    pub recording_sid: Option<String>,
    /// The media session's report, once it ended.
    pub report: Option<CallerReport>,
    /// Why the media session did not run (bad TwiML, webhook error, WebSocket rejected, …).
    pub error: Option<String>,
    /// Every callback due has been sent and the call is over.
    pub done: bool,
}

impl EmulatedCall {
    /// The status callbacks sent, in order.
    pub fn status_callbacks(&self) -> Vec<&SentCallback> {
        self.callbacks_of(CallbackKind::Status)
    }

    pub fn callbacks_of(&self, kind: CallbackKind) -> Vec<&SentCallback> {
        self.callbacks.iter().filter(|c| c.kind == kind).collect()
    }

    /// The statuses of the timeline, in order.
    pub fn statuses(&self) -> Vec<&str> {
        self.timeline.iter().map(|s| s.status.as_str()).collect()
    }
}

struct Slot {
    call: EmulatedCall,
    hangup: watch::Sender<bool>,
    /// Next status callback `SequenceNumber`.
    seq: u64,
    answered_at: Option<Instant>,
    ended_at: Option<Instant>,
}

#[derive(Default)]
struct EmState {
    requests: Vec<RecordedRequest>,
    calls: Vec<Slot>,
    /// Per `To` number, consulted when a call is dialed (starts as the config's).
    outcomes: Vec<(String, Outcome)>,
    /// Create faults with their remaining uses (starts as the config's).
    create_faults: Vec<CreateFaultRule>,
}

impl EmState {
    fn slot(&mut self, sid: &str) -> Option<&mut Slot> {
        self.calls.iter_mut().find(|s| s.call.sid == sid)
    }
}

struct Inner {
    cfg: TwilioEmulatorConfig,
    state: Mutex<EmState>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// A running Twilio REST API emulator on `127.0.0.1`.
pub struct TwilioEmulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl TwilioEmulator {
    /// Bind `127.0.0.1:0` and serve.
    pub async fn start(cfg: TwilioEmulatorConfig) -> std::io::Result<TwilioEmulator> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = EmState {
            outcomes: cfg.outcomes.clone(),
            create_faults: cfg.create_faults.clone(),
            ..EmState::default()
        };
        let inner = Arc::new(Inner {
            cfg,
            state: Mutex::new(state),
            tasks: Mutex::new(Vec::new()),
        });
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(TwilioEmulator {
            inner,
            addr,
            stop: Some(stop),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT` (use as `TWILIO_API_BASE`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The configuration it started with (outcomes and faults changed at run time
    /// are not reflected here).
    pub fn config(&self) -> &TwilioEmulatorConfig {
        &self.inner.cfg
    }

    /// What `to` does from now on, for calls dialed after this (replaces any earlier
    /// outcome of that number).
    pub fn set_outcome(&self, to: &str, outcome: Outcome) {
        let mut st = self.inner.lock();
        st.outcomes.retain(|(n, _)| n != to);
        st.outcomes.push((to.to_owned(), outcome));
    }

    /// Add a create fault, after those already there.
    pub fn add_create_fault(&self, rule: CreateFaultRule) {
        self.inner.lock().create_faults.push(rule);
    }

    /// Remove every create fault (used up or not).
    pub fn clear_create_faults(&self) {
        self.inner.lock().create_faults.clear();
    }

    /// The create faults with their remaining uses (used-up rules are dropped).
    pub fn create_faults(&self) -> Vec<CreateFaultRule> {
        self.inner.lock().create_faults.clone()
    }

    /// Every REST request received so far, in order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.lock().requests.clone()
    }

    /// Every call created so far, in order of creation.
    pub fn calls(&self) -> Vec<EmulatedCall> {
        self.inner
            .lock()
            .calls
            .iter()
            .map(|s| s.call.clone())
            .collect()
    }

    /// One call, as it is now.
    pub fn call(&self, sid: &str) -> Option<EmulatedCall> {
        self.inner.lock().slot(sid).map(|s| s.call.clone())
    }

    /// Wait until the call is over and every callback due was sent; `None` on
    /// timeout or an unknown sid.
    pub async fn wait_call_done(&self, sid: &str, timeout: Duration) -> Option<EmulatedCall> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.call(sid) {
                Some(c) if c.done => return Some(c),
                None => return None,
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Wait until the call has reached `status` (at any time); returns the call then.
    pub async fn wait_status(
        &self,
        sid: &str,
        status: &str,
        timeout: Duration,
    ) -> Option<EmulatedCall> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.call(sid) {
                Some(c) if c.timeline.iter().any(|s| s.status == status) => return Some(c),
                None => return None,
                Some(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stop serving and abort the calls still running.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            let abort = server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.abort_tasks();
    }

    fn abort_tasks(&self) {
        let tasks = std::mem::take(&mut *lock_or_poisoned(&self.inner.tasks));
        for t in tasks {
            t.abort();
        }
    }
}

impl Drop for TwilioEmulator {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
        self.abort_tasks();
    }
}

fn lock_or_poisoned<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// REST

struct Reply {
    status: u16,
    body: Value,
    /// How the response is (not) delivered.
    delivery: Delivery,
}

/// How a reply reaches the client (only create faults change it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Delivery {
    Normal,
    /// Close the connection without a response.
    Drop,
    /// Answer after this delay.
    Delay(Duration),
}

fn reply(status: u16, body: Value) -> Reply {
    Reply {
        status,
        body,
        delivery: Delivery::Normal,
    }
}

/// Twilio's JSON error body.
fn twilio_error(status: u16, code: u32, message: impl Into<String>) -> Reply {
    reply(
        status,
        json!({
            "code": code,
            "message": message.into(),
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status,
        }),
    )
}

fn not_found(path: &str) -> Reply {
    twilio_error(
        404,
        20404,
        format!("The requested resource {path} was not found"),
    )
}

async fn handle(
    State(em): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let auth = basic_auth(&headers);
    let path = uri.path().to_string();
    let query = uri.query().unwrap_or_default().to_string();
    let r = em.route(&method, &path, &query, auth.as_ref(), &form);
    lock_or_poisoned(&em.state).requests.push(RecordedRequest {
        method: method.to_string(),
        path,
        query,
        auth_user: auth.map(|(u, _)| u),
        form,
        status: if r.delivery == Delivery::Drop {
            0
        } else {
            r.status
        },
    });
    match r.delivery {
        Delivery::Normal => {}
        Delivery::Delay(d) => tokio::time::sleep(d).await,
        Delivery::Drop => {
            // A body that fails before its first byte makes hyper abort the
            // connection: the client sees it closed, with no status line.
            let failing = futures_util::stream::once(async {
                Err::<Bytes, std::io::Error>(std::io::Error::other("response dropped (fault)"))
            });
            return Response::new(axum::body::Body::from_stream(failing));
        }
    }
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        r.body.to_string(),
    )
        .into_response();
    if r.status == 401
        && let Ok(v) = "Basic realm=\"Twilio API\"".parse()
    {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, cred) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = B64.decode(cred.trim()).ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (u, p) = s.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn first<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `+` and 8-15 digits.
fn is_e164(s: &str) -> bool {
    s.strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

fn is_http_url(s: &str) -> bool {
    url::Url::parse(s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
}

fn random_sid(prefix: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    let mut s = String::with_capacity(34);
    s.push_str(prefix);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, EmState> {
        lock_or_poisoned(&self.state)
    }

    fn spawn(self: &Arc<Self>, fut: impl Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(fut);
        let mut tasks = lock_or_poisoned(&self.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(h);
    }

    fn route(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        query: &str,
        auth: Option<&(String, String)>,
        form: &[(String, String)],
    ) -> Reply {
        let authorized = auth.is_some_and(|(u, p)| {
            (*u == self.cfg.account_sid && *p == self.cfg.auth_token)
                || self.cfg.api_keys.iter().any(|(k, s)| k == u && s == p)
        });
        if !authorized {
            return twilio_error(401, 20003, "Authenticate");
        }
        let Some(rest) = path.strip_prefix(&format!("/{API_VERSION}/Accounts/")) else {
            return not_found(path);
        };
        let Some((account, tail)) = rest.split_once('/') else {
            return not_found(path);
        };
        if account != self.cfg.account_sid {
            return not_found(path);
        }
        let call_sid = tail
            .strip_prefix("Calls/")
            .and_then(|s| s.strip_suffix(".json"))
            .filter(|s| !s.is_empty() && !s.contains('/'));
        match (tail, call_sid) {
            ("Calls.json", _) => match *method {
                Method::POST => self.create(form),
                Method::GET => self.list(path, query),
                _ => twilio_error(405, 20004, "Method not allowed"),
            },
            (_, Some(sid)) => match *method {
                Method::POST => self.update(path, sid, form),
                Method::GET => match self.lock().slot(sid) {
                    Some(s) => reply(200, self.resource(&s.call)),
                    None => not_found(path),
                },
                _ => twilio_error(405, 20004, "Method not allowed"),
            },
            _ => not_found(path),
        }
    }

    fn create(self: &Arc<Self>, form: &[(String, String)]) -> Reply {
        let to = first(form, "To").unwrap_or_default();
        if !is_e164(to) {
            return twilio_error(400, 21211, format!("Invalid 'To' Phone Number: {to}"));
        }
        let from = match first(form, "From") {
            None | Some("") => {
                return twilio_error(400, 21212, "A 'From' phone number is required.");
            }
            Some(f) if !is_e164(f) => {
                return twilio_error(400, 21212, format!("Invalid From Number (caller ID): {f}"));
            }
            Some(f) => f,
        };
        match (first(form, "Url"), first(form, "Twiml")) {
            (Some(_), Some(_)) => {
                return twilio_error(
                    400,
                    21205,
                    "Only one of Url, Twiml or ApplicationSid may be specified.",
                );
            }
            (None, None) => {
                return twilio_error(
                    400,
                    21205,
                    "Either Url, Twiml or ApplicationSid is required.",
                );
            }
            (Some(u), None) if !is_http_url(u) => {
                return twilio_error(400, 21205, format!("Url is not a valid URL: {u}"));
            }
            (None, Some(t)) if t.trim().is_empty() => {
                return twilio_error(400, 21205, "Twiml must not be empty.");
            }
            _ => {}
        }
        for key in [
            "StatusCallback",
            "AsyncAmdStatusCallback",
            "RecordingStatusCallback",
        ] {
            if let Some(u) = first(form, key)
                && !is_http_url(u)
            {
                return twilio_error(400, 21205, format!("{key} is not a valid URL: {u}"));
            }
        }
        let fault = self.take_create_fault(to);
        if let Some(CreateFault::Reject { status, code }) = fault {
            return twilio_error(
                status,
                code,
                format!("Call to {to} rejected (injected fault)"),
            );
        }
        let now = SystemTime::now();
        let sid = random_sid("CA");
        let call = EmulatedCall {
            sid: sid.clone(),
            to: to.to_string(),
            from: from.to_string(),
            params: form.to_vec(),
            status: "queued".into(),
            timeline: vec![StatusChange {
                status: "queued".into(),
                at: now,
            }],
            callbacks: Vec::new(),
            updates: Vec::new(),
            answered_by: None,
            date_created: now,
            start_time: None,
            answer_time: None,
            end_time: None,
            duration: None,
            recording_sid: None,
            report: None,
            error: None,
            done: false,
        };
        let body = self.resource(&call);
        self.lock().calls.push(Slot {
            call,
            hangup: watch::channel(false).0,
            seq: 0,
            answered_at: None,
            ended_at: None,
        });
        self.spawn(dial(self.clone(), sid));
        match fault {
            Some(CreateFault::LoseResponse) => twilio_error(500, 20500, "Internal Server Error"),
            Some(CreateFault::DropConnection) => Reply {
                delivery: Delivery::Drop,
                ..reply(201, body)
            },
            Some(CreateFault::DelayResponse(d)) => Reply {
                delivery: Delivery::Delay(d),
                ..reply(201, body)
            },
            Some(CreateFault::Reject { .. }) | None => reply(201, body),
        }
    }

    /// Use up one fault of the first rule for `to` with uses left.
    fn take_create_fault(&self, to: &str) -> Option<CreateFault> {
        let mut st = self.lock();
        let rules = &mut st.create_faults;
        let i = rules.iter().position(|r| r.to == to && r.times > 0)?;
        let fault = rules[i].fault.clone();
        if rules[i].times != u32::MAX {
            rules[i].times -= 1;
        }
        rules.retain(|r| r.times > 0);
        Some(fault)
    }

    /// `GET …/Calls.json`: filters and paging as described in the module docs.
    fn list(&self, path: &str, query: &str) -> Reply {
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let q = match ListQuery::parse(&params) {
            Ok(q) => q,
            Err(msg) => return twilio_error(400, 20001, msg),
        };
        let st = self.lock();
        // Newest first, with each call's creation index (its place in `st.calls`).
        let matching: Vec<(usize, &EmulatedCall)> = st
            .calls
            .iter()
            .enumerate()
            .rev()
            .map(|(i, s)| (i, &s.call))
            .filter(|(_, c)| q.matches(c))
            .collect();
        let anchor = |sid: &str| st.calls.iter().position(|s| s.call.sid == sid);
        let (from, to) = match &q.token {
            Some(PageToken::After(sid)) => {
                let Some(g) = anchor(sid) else {
                    return twilio_error(400, 20001, format!("Invalid PageToken: PA{sid}"));
                };
                let a = matching.partition_point(|(i, _)| *i >= g);
                (a, (a + q.page_size).min(matching.len()))
            }
            Some(PageToken::Before(sid)) => {
                let Some(g) = anchor(sid) else {
                    return twilio_error(400, 20001, format!("Invalid PageToken: PB{sid}"));
                };
                let b = matching.partition_point(|(i, _)| *i > g);
                (b.saturating_sub(q.page_size), b)
            }
            None => {
                let a = q.page.saturating_mul(q.page_size).min(matching.len());
                (a, (a + q.page_size).min(matching.len()))
            }
        };
        let page = &matching[from..to];
        let calls: Vec<Value> = page.iter().map(|(_, c)| self.resource(c)).collect();
        let page_uri = |page: usize, token: Option<String>| {
            let mut ser = url::form_urlencoded::Serializer::new(String::new());
            ser.extend_pairs(q.filters.iter());
            ser.append_pair("PageSize", &q.page_size.to_string());
            ser.append_pair("Page", &page.to_string());
            if let Some(t) = token {
                ser.append_pair("PageToken", &t);
            }
            format!("{path}?{}", ser.finish())
        };
        let next = match page.last() {
            Some((_, c)) if to < matching.len() => {
                Some(page_uri(q.page + 1, Some(format!("PA{}", c.sid))))
            }
            _ => None,
        };
        let previous = match page.first() {
            Some((_, c)) if from > 0 && q.page > 0 => {
                Some(page_uri(q.page - 1, Some(format!("PB{}", c.sid))))
            }
            _ => None,
        };
        let start = q.page.saturating_mul(q.page_size);
        let uri = if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        };
        reply(
            200,
            json!({
                "calls": calls,
                "end": (start + calls.len()).saturating_sub(1).max(start),
                "first_page_uri": page_uri(0, None),
                "next_page_uri": next,
                "page": q.page,
                "page_size": q.page_size,
                "previous_page_uri": previous,
                "start": start,
                "uri": uri,
            }),
        )
    }

    fn update(&self, path: &str, sid: &str, form: &[(String, String)]) -> Reply {
        let status = first(form, "Status");
        let redirect = first(form, "Twiml").is_some() || first(form, "Url").is_some();
        if let Some(s) = status
            && s != "completed"
            && s != "canceled"
        {
            return twilio_error(
                400,
                20001,
                format!("Status must be one of completed, canceled: {s}"),
            );
        }
        if first(form, "Twiml").is_some() && first(form, "Url").is_some() {
            return twilio_error(
                400,
                21205,
                "Only one of Url, Twiml or ApplicationSid may be specified.",
            );
        }
        if status.is_none() && !redirect {
            return twilio_error(
                400,
                20001,
                "At least one of Status, Url or Twiml is required.",
            );
        }
        let mut st = self.lock();
        let Some(slot) = st.slot(sid) else {
            return not_found(path);
        };
        slot.call.updates.push(form.to_vec());
        let is_final = FINAL_STATUSES.contains(&slot.call.status.as_str());
        if is_final {
            if redirect {
                return twilio_error(400, 21220, "Call is not in-progress. Cannot redirect.");
            }
            return reply(200, self.resource(&slot.call));
        }
        let answered = slot.call.status == "in-progress";
        match status {
            Some("completed") => {
                end_slot(slot, if answered { "completed" } else { "canceled" });
                slot.hangup.send_replace(true);
            }
            Some(_) if !answered => {
                end_slot(slot, "canceled");
                slot.hangup.send_replace(true);
            }
            // `canceled` has no effect on a call in progress.
            _ => {
                if redirect && answered {
                    // New TwiML ends the running <Connect><Stream> (recorded in `updates`).
                    slot.hangup.send_replace(true);
                }
            }
        }
        reply(200, self.resource(&slot.call))
    }

    /// Twilio's call resource.
    fn resource(&self, c: &EmulatedCall) -> Value {
        let acct = &self.cfg.account_sid;
        let base = format!("/{API_VERSION}/Accounts/{acct}/Calls/{}", c.sid);
        let sub = |name: &str| format!("{base}/{name}.json");
        let time = |t: Option<SystemTime>| t.map(rfc2822);
        let updated = c
            .timeline
            .last()
            .map_or(c.date_created, |s| s.at)
            .max(c.date_created);
        json!({
            "account_sid": acct,
            "annotation": null,
            "answered_by": c.answered_by,
            "api_version": API_VERSION,
            "caller_name": null,
            "date_created": rfc2822(c.date_created),
            "date_updated": rfc2822(updated),
            "direction": "outbound-api",
            "duration": c.duration.map(|d| d.to_string()),
            "end_time": time(c.end_time),
            "forwarded_from": null,
            "from": c.from,
            "from_formatted": c.from,
            "group_sid": null,
            "parent_call_sid": null,
            "phone_number_sid": null,
            "price": null,
            "price_unit": "USD",
            "queue_time": "0",
            "sid": c.sid,
            "start_time": time(c.start_time),
            "status": c.status,
            "subresource_uris": {
                "notifications": sub("Notifications"),
                "recordings": sub("Recordings"),
                "payments": sub("Payments"),
                "events": sub("Events"),
                "siprec": sub("Siprec"),
                "streams": sub("Streams"),
                "transcriptions": sub("Transcriptions"),
                "user_defined_message_subscriptions": sub("UserDefinedMessageSubscriptions"),
                "user_defined_messages": sub("UserDefinedMessages"),
            },
            "to": c.to,
            "to_formatted": c.to,
            "trunk_sid": null,
            "uri": format!("{base}.json"),
        })
    }
}

/// Move a call to a final status (idempotent: the first final status wins).
fn end_slot(slot: &mut Slot, status: &str) {
    if FINAL_STATUSES.contains(&slot.call.status.as_str()) {
        return;
    }
    let now = SystemTime::now();
    let mono = Instant::now();
    slot.call.status = status.to_string();
    slot.call.timeline.push(StatusChange {
        status: status.to_string(),
        at: now,
    });
    slot.call.end_time = Some(now);
    slot.ended_at = Some(mono);
    slot.call.duration = Some(slot.answered_at.map_or(0, |a| {
        mono.saturating_duration_since(a).as_millis().div_ceil(1000) as u64
    }));
}

// ---------------------------------------------------------------------------
// The call

/// The create request's params that drive the call.
struct CallPlan {
    sid: String,
    to: String,
    from: String,
    url: Option<String>,
    method: String,
    twiml: Option<String>,
    status_callback: Option<String>,
    status_method: String,
    /// Events requested (`completed` is always sent when `status_callback` is set).
    events: BTreeSet<String>,
    timeout_ms: u64,
    time_limit: Option<Duration>,
    machine_detection: Option<String>,
    async_amd: bool,
    amd_callback: Option<String>,
    amd_method: String,
    record: bool,
    recording_channels: String,
    recording_callback: Option<String>,
    recording_method: String,
    recording_events: BTreeSet<String>,
}

impl CallPlan {
    fn new(c: &EmulatedCall) -> Self {
        let f = &c.params;
        let get = |k: &str| first(f, k).map(str::to_string);
        let method = |k: &str| {
            if first(f, k).is_some_and(|m| m.eq_ignore_ascii_case("GET")) {
                "GET".to_string()
            } else {
                "POST".to_string()
            }
        };
        // Repeated keys, or (older clients) space-separated values in one key.
        let list = |k: &str| -> BTreeSet<String> {
            f.iter()
                .filter(|(key, _)| key == k)
                .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
                .collect()
        };
        let secs = |k: &str| first(f, k).and_then(|v| v.trim().parse::<u64>().ok());
        Self {
            sid: c.sid.clone(),
            to: c.to.clone(),
            from: c.from.clone(),
            url: get("Url"),
            method: method("Method"),
            twiml: get("Twiml"),
            status_callback: get("StatusCallback"),
            status_method: method("StatusCallbackMethod"),
            events: list("StatusCallbackEvent"),
            timeout_ms: secs("Timeout").unwrap_or(60) * 1000,
            time_limit: secs("TimeLimit").map(Duration::from_secs),
            machine_detection: get("MachineDetection").filter(|s| !s.is_empty()),
            async_amd: first(f, "AsyncAmd").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            amd_callback: get("AsyncAmdStatusCallback"),
            amd_method: method("AsyncAmdStatusCallbackMethod"),
            record: first(f, "Record").is_some_and(|v| v.eq_ignore_ascii_case("true")),
            recording_channels: match first(f, "RecordingChannels") {
                Some("dual") => "2".into(),
                None | Some("mono") | Some("") => "1".into(),
                Some(other) => other.to_string(),
            },
            recording_callback: get("RecordingStatusCallback"),
            recording_method: method("RecordingStatusCallbackMethod"),
            recording_events: list("RecordingStatusCallbackEvent"),
        }
    }
}

/// Sleep `ms`, or return true at once if the call was hung up / canceled.
async fn hung_up_during(rx: &mut watch::Receiver<bool>, ms: u64) -> bool {
    let woke = tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(ms)) => false,
        r = rx.wait_for(|v| *v) => r.is_ok(),
    };
    woke || *rx.borrow()
}

async fn dial(em: Arc<Inner>, sid: String) {
    let (plan, mut hang) = {
        let mut st = em.lock();
        let Some(slot) = st.slot(&sid) else { return };
        (CallPlan::new(&slot.call), slot.hangup.subscribe())
    };
    let outcome = em
        .lock()
        .outcomes
        .iter()
        .find(|(n, _)| *n == plan.to)
        .map_or(Outcome::Answer, |(_, o)| o.clone());

    let answered = 'ring: {
        if hung_up_during(&mut hang, INITIATE_MS).await || !em.transition(&sid, "initiated") {
            break 'ring false;
        }
        em.status_callback(&plan, "initiated", "initiated", Vec::new())
            .await;
        if outcome == Outcome::Fail {
            if !hung_up_during(&mut hang, FAIL_AFTER_MS).await {
                em.end(&sid, "failed");
            }
            break 'ring false;
        }
        if hung_up_during(&mut hang, RING_AFTER_MS).await || !em.transition(&sid, "ringing") {
            break 'ring false;
        }
        em.status_callback(&plan, "ringing", "ringing", Vec::new())
            .await;
        let (wait, final_status) = match outcome {
            Outcome::Busy => (BUSY_AFTER_MS, Some("busy")),
            Outcome::NoAnswer => (em.cfg.ring_ms, Some("no-answer")),
            _ if em.cfg.ring_ms >= plan.timeout_ms => (plan.timeout_ms, Some("no-answer")),
            _ => (em.cfg.ring_ms, None),
        };
        if hung_up_during(&mut hang, wait).await {
            break 'ring false;
        }
        match final_status {
            Some(s) => {
                em.end(&sid, s);
                false
            }
            None => em.transition(&sid, "in-progress"),
        }
    };
    if answered {
        em.in_progress(&plan, &outcome, hang).await;
    }
    em.finish(&plan).await;
}

impl Inner {
    /// Move a live call to a non-final status; false if it already ended.
    fn transition(&self, sid: &str, status: &str) -> bool {
        let mut st = self.lock();
        let Some(slot) = st.slot(sid) else {
            return false;
        };
        if FINAL_STATUSES.contains(&slot.call.status.as_str()) {
            return false;
        }
        let now = SystemTime::now();
        slot.call.status = status.to_string();
        slot.call.timeline.push(StatusChange {
            status: status.to_string(),
            at: now,
        });
        match status {
            "initiated" => slot.call.start_time = Some(now),
            "in-progress" => {
                slot.call.answer_time = Some(now);
                slot.answered_at = Some(Instant::now());
            }
            _ => {}
        }
        true
    }

    fn end(&self, sid: &str, status: &str) {
        if let Some(slot) = self.lock().slot(sid) {
            end_slot(slot, status);
        }
    }

    fn hang_up(&self, sid: &str) {
        if let Some(slot) = self.lock().slot(sid) {
            slot.hangup.send_replace(true);
        }
    }

    fn with_call<T>(&self, sid: &str, f: impl FnOnce(&mut Slot) -> T) -> Option<T> {
        self.lock().slot(sid).map(f)
    }

    /// The answered call: AMD, TwiML, media session.
    async fn in_progress(
        self: &Arc<Self>,
        plan: &CallPlan,
        outcome: &Outcome,
        hang: watch::Receiver<bool>,
    ) {
        let amd = match outcome {
            Outcome::Machine => "machine_start",
            _ => "human",
        };
        let sync_amd = plan.machine_detection.is_some() && !plan.async_amd;
        let mut answered_extra = Vec::new();
        if sync_amd {
            self.with_call(&plan.sid, |s| s.call.answered_by = Some(amd.into()));
            answered_extra.push(("AnsweredBy".to_string(), amd.to_string()));
        }
        self.status_callback(plan, "answered", "in-progress", answered_extra)
            .await;

        if plan.machine_detection.is_some() && plan.async_amd {
            let em = self.clone();
            let sid = plan.sid.clone();
            let url = plan.amd_callback.clone();
            let method = plan.amd_method.clone();
            let started = Instant::now();
            self.spawn(async move {
                tokio::time::sleep(Duration::from_millis(AMD_AFTER_MS)).await;
                em.with_call(&sid, |s| s.call.answered_by = Some(amd.into()));
                if let Some(url) = url {
                    let form = pairs(&[
                        ("AccountSid", &em.cfg.account_sid),
                        ("CallSid", &sid),
                        ("AnsweredBy", amd),
                        (
                            "MachineDetectionDuration",
                            &started.elapsed().as_millis().to_string(),
                        ),
                    ]);
                    em.send(&sid, CallbackKind::AsyncAmd, &url, &method, form)
                        .await;
                }
            });
        }
        if let Some(limit) = plan.time_limit {
            let em = self.clone();
            let sid = plan.sid.clone();
            self.spawn(async move {
                tokio::time::sleep(limit).await;
                em.hang_up(&sid);
            });
        }

        let connect_from;
        let twiml = match (&plan.twiml, &plan.url) {
            (Some(t), _) => {
                connect_from = self.cfg.webhook_base.clone();
                t.clone()
            }
            (None, Some(url)) => {
                connect_from = self.reachable(url).ok().map(|u| u.to_string());
                let mut form = caller::webhook_params(&CallerConfig {
                    account_sid: self.cfg.account_sid.clone(),
                    call_sid: plan.sid.clone(),
                    from: plan.from.clone(),
                    to: plan.to.clone(),
                    direction: "outbound-api".into(),
                    ..CallerConfig::default()
                });
                for (k, v) in form.iter_mut() {
                    if k == "CallStatus" {
                        *v = "in-progress".into();
                    }
                }
                if sync_amd {
                    form.push(("AnsweredBy".into(), amd.into()));
                }
                let sent = self
                    .send(&plan.sid, CallbackKind::Voice, url, &plan.method, form)
                    .await;
                if let Some(e) = sent.error {
                    self.with_call(&plan.sid, |s| {
                        s.call.error = Some(format!("voice webhook: {e}"));
                    });
                    return;
                }
                sent.response_body
            }
            (None, None) => return,
        };
        let connect_base = self.cfg.connect_base.clone().or_else(|| {
            let u = url::Url::parse(connect_from.as_deref()?).ok()?;
            let scheme = if u.scheme() == "https" { "wss" } else { "ws" };
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            Some(format!("{scheme}://{}{port}", u.host_str()?))
        });
        let script = match outcome {
            Outcome::AnswerWithScript(s) => s.clone(),
            _ => self.cfg.default_script.clone(),
        };
        let ccfg = CallerConfig {
            voice_url: plan.url.clone().unwrap_or_default(),
            public_url: String::new(),
            auth_token: Some(self.cfg.auth_token.clone()),
            connect_base,
            account_sid: self.cfg.account_sid.clone(),
            call_sid: plan.sid.clone(),
            from: plan.from.clone(),
            to: plan.to.clone(),
            direction: "outbound-api".into(),
            script,
            twiml: Some(twiml),
            hangup: Some(hang),
            ..CallerConfig::default()
        };
        let result = caller::run_call_with(ccfg, self.cfg.run_options.clone()).await;
        self.with_call(&plan.sid, |s| match result {
            Ok(r) => s.call.report = Some(r),
            Err(e) => s.call.error = Some(e.to_string()),
        });
    }

    /// The call is over: final status, `completed` event, recording callback, done.
    async fn finish(&self, plan: &CallPlan) {
        let (status, duration, answer_time) = {
            let mut st = self.lock();
            let Some(slot) = st.slot(&plan.sid) else {
                return;
            };
            let fallback = if slot.answered_at.is_some() {
                "completed"
            } else {
                "canceled"
            };
            end_slot(slot, fallback);
            (
                slot.call.status.clone(),
                slot.call.duration.unwrap_or(0),
                slot.call.answer_time,
            )
        };
        let d = duration.to_string();
        let minutes = duration.div_ceil(60).to_string();
        self.status_callback(
            plan,
            "completed",
            &status,
            pairs(&[("CallDuration", &d), ("Duration", &minutes)]),
        )
        .await;
        let recording_due = plan.record
            && answer_time.is_some()
            && (plan.recording_events.is_empty() || plan.recording_events.contains("completed"));
        if let (true, Some(url), Some(start)) =
            (recording_due, &plan.recording_callback, answer_time)
        {
            let re = random_sid("RE");
            self.with_call(&plan.sid, |s| s.call.recording_sid = Some(re.clone()));
            let acct = &self.cfg.account_sid;
            let rec_url =
                format!("https://api.twilio.com/{API_VERSION}/Accounts/{acct}/Recordings/{re}");
            let form = pairs(&[
                ("AccountSid", acct),
                ("CallSid", &plan.sid),
                ("RecordingSid", &re),
                ("RecordingUrl", &rec_url),
                ("RecordingStatus", "completed"),
                ("RecordingDuration", &d),
                ("RecordingChannels", &plan.recording_channels),
                ("RecordingStartTime", &rfc2822(start)),
                ("RecordingSource", "OutboundAPI"),
            ]);
            self.send(
                &plan.sid,
                CallbackKind::Recording,
                url,
                &plan.recording_method,
                form,
            )
            .await;
        }
        self.with_call(&plan.sid, |s| s.call.done = true);
    }

    /// A status callback for `event` (if requested) with `CallStatus=status`.
    async fn status_callback(
        &self,
        plan: &CallPlan,
        event: &str,
        status: &str,
        extra: Vec<(String, String)>,
    ) {
        let Some(url) = &plan.status_callback else {
            return;
        };
        if event != "completed" && !plan.events.contains(event) {
            return;
        }
        let Some(seq) = self.with_call(&plan.sid, |s| {
            s.seq += 1;
            s.seq - 1
        }) else {
            return;
        };
        let mut form = pairs(&[
            ("AccountSid", &self.cfg.account_sid),
            ("ApiVersion", API_VERSION),
            ("CallSid", &plan.sid),
            ("CallStatus", status),
            ("Called", &plan.to),
            ("Caller", &plan.from),
            ("Direction", "outbound-api"),
            ("From", &plan.from),
            ("To", &plan.to),
            ("Timestamp", &rfc2822(SystemTime::now())),
            ("SequenceNumber", &seq.to_string()),
            ("CallbackSource", "call-progress-events"),
        ]);
        form.extend(extra);
        if event == "completed" {
            let sip = match status {
                "completed" => "200",
                "busy" => "486",
                "no-answer" | "canceled" => "487",
                _ => "500",
            };
            form.push(("SipResponseCode".into(), sip.into()));
        }
        self.send(
            &plan.sid,
            CallbackKind::Status,
            url,
            &plan.status_method,
            form,
        )
        .await;
    }

    /// Where a URL is actually sent (https → `webhook_base` when configured).
    fn reachable(&self, raw: &str) -> Result<url::Url, String> {
        let u = url::Url::parse(raw).map_err(|e| format!("bad URL {raw:?}: {e}"))?;
        match (&self.cfg.webhook_base, u.scheme()) {
            (Some(base), "https") => {
                let path = &u[url::Position::BeforePath..url::Position::AfterQuery];
                let joined = format!("{}{path}", base.trim_end_matches('/'));
                url::Url::parse(&joined).map_err(|e| format!("bad URL {joined:?}: {e}"))
            }
            _ => Ok(u),
        }
    }

    /// Send a signed webhook and record it on the call.
    async fn send(
        &self,
        sid: &str,
        kind: CallbackKind,
        url: &str,
        method: &str,
        form: Vec<(String, String)>,
    ) -> SentCallback {
        let get = method.eq_ignore_ascii_case("GET");
        let (signed_url, body, signature) = if get {
            let mut u = url.to_string();
            let q = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter())
                .finish();
            if !q.is_empty() {
                u.push(if u.contains('?') { '&' } else { '?' });
                u.push_str(&q);
            }
            let sig = compute_signature(&self.cfg.auth_token, &u, &[]);
            (u, String::new(), sig)
        } else {
            let body = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter())
                .finish();
            let sig = compute_signature(&self.cfg.auth_token, url, &form);
            (url.to_string(), body, sig)
        };
        let method = if get { "GET" } else { "POST" };
        let result = match self.reachable(&signed_url) {
            Err(e) => Err(e),
            Ok(target) => {
                let headers = [(SIGNATURE_HEADER.to_string(), signature.clone())];
                match tokio::time::timeout(
                    CALLBACK_TIMEOUT,
                    caller::http_request(method, &target, &headers, &body),
                )
                .await
                {
                    Err(_) => Err("timed out".to_string()),
                    Ok(Err(e)) => Err(e.to_string()),
                    Ok(Ok(x)) => Ok(x),
                }
            }
        };
        let (status, response_body, error) = match result {
            Ok((s, b)) if (200..300).contains(&s) => (Some(s), b, None),
            Ok((s, b)) => (Some(s), b, Some(format!("HTTP {s}"))),
            Err(e) => (None, String::new(), Some(e)),
        };
        let sent = SentCallback {
            kind,
            url: signed_url,
            method: method.to_string(),
            form,
            signature,
            status,
            response_body,
            error,
            at: SystemTime::now(),
        };
        self.with_call(sid, |s| s.call.callbacks.push(sent.clone()));
        sent
    }
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------
// The list query

/// Where a `PageToken` starts a page.
#[derive(Debug, PartialEq, Eq)]
enum PageToken {
    /// `PA<sid>`: calls created before `sid` (the next page).
    After(String),
    /// `PB<sid>`: the page of calls created just after `sid` (the previous page).
    Before(String),
}

/// Which side of a day or instant a time filter keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    /// `StartTime=`: within that UTC day (or at that instant).
    On,
    /// `StartTime<=` (sent as `StartTime<`): at or before midnight of that day.
    OnOrBefore,
    /// `StartTime>=` (sent as `StartTime>`): at or after midnight of that day.
    OnOrAfter,
}

/// A time filter: `(start_time?, comparison, ms since the epoch, whole day?)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TimeFilter {
    on_start: bool,
    cmp: Cmp,
    at_ms: i64,
    day: bool,
}

impl TimeFilter {
    /// Calls without the time (never dialed / not ended) match no time filter.
    fn matches(&self, t: Option<SystemTime>) -> bool {
        let Some(t) = t else { return false };
        let ms = match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => -(e.duration().as_millis() as i64),
        };
        match self.cmp {
            Cmp::On if self.day => (self.at_ms..self.at_ms + 86_400_000).contains(&ms),
            Cmp::On => ms / 1000 == self.at_ms / 1000,
            Cmp::OnOrBefore => ms <= self.at_ms,
            Cmp::OnOrAfter => ms >= self.at_ms,
        }
    }
}

/// The parsed query of `GET …/Calls.json`.
#[derive(Debug)]
struct ListQuery {
    to: Option<String>,
    from: Option<String>,
    status: Option<String>,
    times: Vec<TimeFilter>,
    page_size: usize,
    page: usize,
    token: Option<PageToken>,
    /// Every param except the paging ones, as received (echoed in page URIs).
    filters: Vec<(String, String)>,
}

impl ListQuery {
    fn parse(params: &[(String, String)]) -> Result<Self, String> {
        let mut q = ListQuery {
            to: None,
            from: None,
            status: None,
            times: Vec::new(),
            page_size: DEFAULT_PAGE_SIZE,
            page: 0,
            token: None,
            filters: Vec::new(),
        };
        for (k, v) in params {
            let time = |on_start: bool, cmp: Cmp| -> Result<TimeFilter, String> {
                let (at_ms, day) =
                    parse_date(v).ok_or_else(|| format!("Invalid value for {k}: {v}"))?;
                Ok(TimeFilter {
                    on_start,
                    cmp,
                    at_ms,
                    day,
                })
            };
            match k.as_str() {
                "PageSize" => {
                    q.page_size = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                        .ok_or_else(|| {
                            format!("PageSize must be between 1 and {MAX_PAGE_SIZE}: {v}")
                        })?;
                    continue;
                }
                "Page" => {
                    q.page = v
                        .parse()
                        .map_err(|_| format!("Page must be a non-negative integer: {v}"))?;
                    continue;
                }
                "PageToken" => {
                    q.token = Some(if let Some(sid) = v.strip_prefix("PA") {
                        PageToken::After(sid.to_string())
                    } else if let Some(sid) = v.strip_prefix("PB") {
                        PageToken::Before(sid.to_string())
                    } else {
                        return Err(format!("Invalid PageToken: {v}"));
                    });
                    continue;
                }
                "To" => q.to = Some(v.clone()),
                "From" => q.from = Some(v.clone()),
                "Status" => {
                    if !CALL_STATUSES.contains(&v.as_str()) {
                        return Err(format!("Invalid value for Status: {v}"));
                    }
                    q.status = Some(v.clone());
                }
                "StartTime" => q.times.push(time(true, Cmp::On)?),
                "StartTime<" => q.times.push(time(true, Cmp::OnOrBefore)?),
                "StartTime>" => q.times.push(time(true, Cmp::OnOrAfter)?),
                "EndTime" => q.times.push(time(false, Cmp::On)?),
                "EndTime<" => q.times.push(time(false, Cmp::OnOrBefore)?),
                "EndTime>" => q.times.push(time(false, Cmp::OnOrAfter)?),
                // Unknown params are ignored, as Twilio does.
                _ => {}
            }
            q.filters.push((k.clone(), v.clone()));
        }
        Ok(q)
    }

    fn matches(&self, c: &EmulatedCall) -> bool {
        self.to.as_ref().is_none_or(|t| *t == c.to)
            && self.from.as_ref().is_none_or(|f| *f == c.from)
            && self.status.as_ref().is_none_or(|s| *s == c.status)
            && self
                .times
                .iter()
                .all(|t| t.matches(if t.on_start { c.start_time } else { c.end_time }))
    }
}

/// `YYYY-MM-DD` (→ midnight UTC, whole day) or `YYYY-MM-DDTHH:MM:SSZ` (→ that
/// instant) as ms since the epoch, with whether it was a whole day.
fn parse_date(s: &str) -> Option<(i64, bool)> {
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let b = s.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let day_ms = days_from_civil(y, m, d) * 86_400_000;
    match b.len() {
        10 => Some((day_ms, true)),
        20 if b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'Z' => {
            let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
            if hh > 23 || mm > 59 || ss > 60 {
                return None;
            }
            Some((day_ms + (hh * 3600 + mm * 60 + ss) * 1000, false))
        }
        _ => None,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// days_from_civil, the inverse of the conversion in [`rfc2822`]).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// ---------------------------------------------------------------------------
// Time

/// RFC 2822 in UTC as Twilio writes it: `Tue, 14 Nov 2023 22:13:20 +0000`.
pub fn rfc2822(t: SystemTime) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let wd = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000",
        DAYS[wd],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `(year, month, day)` of a day count since 1970-01-01 (Howard Hinnant's
/// civil_from_days).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2822_dates() {
        let at = |s: u64| rfc2822(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(at(1_700_000_000), "Tue, 14 Nov 2023 22:13:20 +0000");
        assert_eq!(at(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(at(1_283_286_988), "Tue, 31 Aug 2010 20:36:28 +0000");
    }

    #[test]
    fn e164() {
        assert!(is_e164("+14155550100"));
        assert!(is_e164("+12345678"));
        assert!(!is_e164("14155550100"));
        assert!(!is_e164("+1234567"));
        assert!(!is_e164("+1234567890123456"));
        assert!(!is_e164("+1415555010a"));
        assert!(!is_e164(""));
    }

    #[test]
    fn dates_round_trip() {
        for days in [-719_468, -1, 0, 11_016, 19_675, 20_778, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
        assert_eq!(parse_date("2026-11-21"), Some((20_778 * 86_400_000, true)));
        assert_eq!(
            parse_date("2026-11-21T01:02:03Z"),
            Some((20_778 * 86_400_000 + 3_723_000, false))
        );
        for bad in [
            "2026-11-2",
            "2026-13-01",
            "2026-11-32",
            "26-11-21",
            "2026-11-21T25:00:00Z",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    // -- the REST client against the emulator ------------------------------------------

    use voxbridge_twilio::rest::{
        Auth, CreateCall, ListCalls, RetryPolicy, TwilioClient, TwilioError,
    };

    const FROM: &str = "+14155550100";
    const DONE: Duration = Duration::from_secs(20);
    /// A voice URL nobody listens on (busy / failed outcomes never fetch it).
    const NOWHERE: &str = "http://127.0.0.1:9/voice";

    async fn emulator(cfg: TwilioEmulatorConfig) -> TwilioEmulator {
        TwilioEmulator::start(TwilioEmulatorConfig { ring_ms: 50, ..cfg })
            .await
            .expect("emulator starts")
    }

    fn client(em: &TwilioEmulator) -> TwilioClient {
        TwilioClient::new(
            &em.base_url(),
            &em.config().account_sid,
            Auth::AccountToken {
                auth_token: em.config().auth_token.clone(),
            },
        )
        .expect("client")
        .with_retry(RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        })
    }

    fn create_to(to: &str, url: &str) -> CreateCall {
        CreateCall {
            to: to.into(),
            from: FROM.into(),
            url: Some(url.into()),
            ..CreateCall::default()
        }
    }

    fn ymd(days: i64) -> String {
        let (y, m, d) = civil_from_days(days);
        format!("{y:04}-{m:02}-{d:02}")
    }

    fn day_of(t: SystemTime) -> i64 {
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        (secs / 86_400) as i64
    }

    /// A call that stays queued (never dialed): no start_time.
    fn insert_queued(em: &TwilioEmulator, to: &str) -> String {
        let now = SystemTime::now();
        let sid = random_sid("CA");
        em.inner.lock().calls.push(Slot {
            call: EmulatedCall {
                sid: sid.clone(),
                to: to.into(),
                from: FROM.into(),
                params: Vec::new(),
                status: "queued".into(),
                timeline: vec![StatusChange {
                    status: "queued".into(),
                    at: now,
                }],
                callbacks: Vec::new(),
                updates: Vec::new(),
                answered_by: None,
                date_created: now,
                start_time: None,
                answer_time: None,
                end_time: None,
                duration: None,
                recording_sid: None,
                report: None,
                error: None,
                done: true,
            },
            hangup: watch::channel(false).0,
            seq: 0,
            answered_at: None,
            ended_at: None,
        });
        sid
    }

    async fn get_json(em: &TwilioEmulator, path_and_query: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(format!("{}{path_and_query}", em.base_url()))
            .basic_auth(&em.config().account_sid, Some(&em.config().auth_token))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json"))
    }

    fn sids(v: &Value) -> Vec<String> {
        v["calls"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|c| c["sid"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn list_filters_and_pages_like_twilio() {
        let (a, b, c, q) = (
            "+14155550101",
            "+14155550102",
            "+14155550103",
            "+14155550104",
        );
        let em = emulator(TwilioEmulatorConfig {
            outcomes: [a, b, c]
                .iter()
                .map(|n| (n.to_string(), Outcome::Busy))
                .collect(),
            ..TwilioEmulatorConfig::default()
        })
        .await;
        let tw = client(&em);
        let mut created = Vec::new();
        for to in [a, a, b, a, c, b] {
            let call = tw
                .create_call(&create_to(to, NOWHERE))
                .await
                .expect("create");
            assert!(call.date_created.is_some());
            created.push(call.sid);
        }
        for sid in &created {
            let done = em.wait_call_done(sid, DONE).await.expect("done");
            assert_eq!(done.status, "busy");
        }
        let queued = insert_queued(&em, q);
        let started = em
            .calls()
            .iter()
            .filter_map(|c| c.start_time)
            .min()
            .expect("started calls");
        let today = day_of(started);

        // `To` + paging through next_page_uri (PageSize 2: two pages for three calls).
        let gets_before = em.requests().len();
        let to_a = tw
            .list_calls(&ListCalls {
                to: Some(a.into()),
                page_size: Some(2),
                ..ListCalls::default()
            })
            .await
            .expect("list");
        let got: Vec<&str> = to_a.iter().map(|c| c.sid.as_str()).collect();
        assert_eq!(got, [&created[3], &created[1], &created[0]]);
        assert_eq!(em.requests().len() - gets_before, 2);
        let reqs = em.requests();
        assert!(
            reqs[gets_before + 1].query.contains("PageToken=PA"),
            "{reqs:?}"
        );

        // `Status` + `StartTime>`: the queued call has no start_time and is not listed.
        let list = |status: Option<&str>, to: Option<&str>, day: Option<i64>| ListCalls {
            status: status.map(str::to_string),
            to: to.map(str::to_string),
            started_on_or_after: day.map(ymd),
            page_size: Some(4),
            ..ListCalls::default()
        };
        let busy = tw
            .list_calls(&list(Some("busy"), None, Some(today)))
            .await
            .expect("list");
        assert_eq!(busy.len(), 6);
        assert!(busy.iter().all(|c| c.start_time.is_some()));
        let tomorrow = tw
            .list_calls(&list(None, None, Some(today + 1)))
            .await
            .expect("list");
        assert!(tomorrow.is_empty());
        let q_dated = tw
            .list_calls(&list(None, Some(q), Some(today)))
            .await
            .expect("list");
        assert!(q_dated.is_empty(), "a queued call has no start_time");
        let q_queued = tw
            .list_calls(&list(Some("queued"), None, None))
            .await
            .expect("list");
        assert_eq!(q_queued.len(), 1);
        assert_eq!(q_queued[0].sid, queued);
        assert_eq!(q_queued[0].start_time, None);
        assert!(q_queued[0].date_created.is_some());

        // The other date filters, on the wire.
        let base = format!(
            "/{API_VERSION}/Accounts/{}/Calls.json",
            em.config().account_sid
        );
        let count = |v: &Value| v["calls"].as_array().map_or(0, Vec::len);
        let (st, v) = get_json(&em, &format!("{base}?StartTime={}", ymd(today))).await;
        assert_eq!((st, count(&v)), (200, 6));
        let (_, v) = get_json(&em, &format!("{base}?StartTime%3C={}", ymd(today))).await;
        assert_eq!(count(&v), 0, "at or before midnight of today: none");
        let (_, v) = get_json(&em, &format!("{base}?StartTime%3C={}", ymd(today + 1))).await;
        assert_eq!(count(&v), 6);
        let (_, v) = get_json(
            &em,
            &format!("{base}?EndTime%3E={}&From=%2B14155550100", ymd(today)),
        )
        .await;
        assert_eq!(count(&v), 6);

        // Bad filters are Twilio errors, not empty lists.
        for bad in [
            "PageSize=0",
            "PageSize=1001",
            "Status=answered",
            "StartTime%3E=2026-13-01",
            "PageToken=PACAnope",
            "PageToken=XX",
        ] {
            let (st, v) = get_json(&em, &format!("{base}?{bad}")).await;
            assert_eq!((st, v["code"].as_u64()), (400, Some(20001)), "{bad}: {v}");
        }

        // next_page_uri stays right when a call is created between two pages.
        let (_, p1) = get_json(&em, &format!("{base}?PageSize=3")).await;
        assert_eq!(p1["first_page_uri"], format!("{base}?PageSize=3&Page=0"));
        assert_eq!(p1["previous_page_uri"], Value::Null);
        let next = p1["next_page_uri"].as_str().expect("next page").to_string();
        tw.create_call(&create_to(c, NOWHERE))
            .await
            .expect("create");
        let (_, p2) = get_json(&em, &next).await;
        assert_eq!(p2["page"], 1);
        assert_eq!(p2["start"], 3);
        let mut all = sids(&p1);
        all.extend(sids(&p2));
        let mut expected: Vec<String> = created.iter().rev().cloned().collect();
        expected.insert(0, queued.clone());
        assert_eq!(all, expected[..6].to_vec(), "no call skipped or repeated");
        let (_, p3) = get_json(&em, p2["next_page_uri"].as_str().expect("page 3")).await;
        assert_eq!(sids(&p3), expected[6..].to_vec());
        assert_eq!(p3["next_page_uri"], Value::Null);
        let (_, back) = get_json(&em, p2["previous_page_uri"].as_str().expect("prev")).await;
        assert_eq!(sids(&back), sids(&p1));
        em.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_faults_hide_the_call_but_it_is_placed() {
        let lose = "+14155550111";
        let drop = "+14155550112";
        let unavailable = "+14155550113";
        let refused = "+14155550114";
        let slow = "+14155550115";
        let em = emulator(TwilioEmulatorConfig {
            create_faults: vec![CreateFaultRule::once(lose, CreateFault::LoseResponse)],
            ..TwilioEmulatorConfig::default()
        })
        .await;
        for n in [lose, drop, unavailable, refused, slow] {
            em.set_outcome(n, Outcome::Busy);
        }
        em.add_create_fault(CreateFaultRule::once(drop, CreateFault::DropConnection));
        em.add_create_fault(CreateFaultRule::once(
            unavailable,
            CreateFault::Reject {
                status: 503,
                code: 20503,
            },
        ));
        em.add_create_fault(CreateFaultRule::always(
            refused,
            CreateFault::Reject {
                status: 400,
                code: 21215,
            },
        ));
        em.add_create_fault(CreateFaultRule::once(
            slow,
            CreateFault::DelayResponse(Duration::from_secs(2)),
        ));
        let tw = client(&em);
        let posts_to = |to: &str| {
            em.requests()
                .into_iter()
                .filter(|r| r.method == "POST" && first(&r.form, "To") == Some(to))
                .collect::<Vec<_>>()
        };
        let calls_to = |to: &str| {
            em.calls()
                .into_iter()
                .filter(|c| c.to == to)
                .collect::<Vec<_>>()
        };

        // Lost response: a 500 without SID, not retried, yet the call was dialed.
        let err = tw
            .create_call(&create_to(lose, NOWHERE))
            .await
            .expect_err("lost");
        assert_eq!(err.http_status(), Some(500), "{err}");
        assert_eq!(posts_to(lose).len(), 1);
        let placed = calls_to(lose);
        assert_eq!(placed.len(), 1);
        let done = em.wait_call_done(&placed[0].sid, DONE).await.expect("done");
        assert_eq!(done.status, "busy");
        let listed = tw
            .list_calls(&ListCalls {
                to: Some(lose.into()),
                ..ListCalls::default()
            })
            .await
            .expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].sid, placed[0].sid);
        // Used up: the next create succeeds.
        tw.create_call(&create_to(lose, NOWHERE))
            .await
            .expect("second create");

        // Dropped connection: no status line at all.
        let err = tw
            .create_call(&create_to(drop, NOWHERE))
            .await
            .expect_err("dropped");
        assert!(matches!(err, TwilioError::Http(_)), "{err:?}");
        let posts = posts_to(drop);
        assert_eq!(posts.len(), 1, "not retried: it may have been executed");
        assert_eq!(posts[0].status, 0);
        assert_eq!(calls_to(drop).len(), 1);

        // 503 creates nothing: the client retries and exactly one call exists.
        tw.create_call(&create_to(unavailable, NOWHERE))
            .await
            .expect("retried after 503");
        assert_eq!(posts_to(unavailable).len(), 2);
        assert_eq!(calls_to(unavailable).len(), 1);

        // Always rejected, nothing created.
        for _ in 0..2 {
            let err = tw
                .create_call(&create_to(refused, NOWHERE))
                .await
                .expect_err("refused");
            assert_eq!(err.twilio_code(), Some(21215));
            assert_eq!(err.code(), "DESTINATION_NOT_ALLOWED");
        }
        assert!(calls_to(refused).is_empty());

        // A response slower than the client's patience.
        let impatient = client(&em)
            .with_timeouts(Duration::from_secs(1), Duration::from_millis(300))
            .expect("timeouts");
        let err = impatient
            .create_call(&create_to(slow, NOWHERE))
            .await
            .expect_err("timed out");
        assert!(
            matches!(err, TwilioError::Http(ref m) if m.contains("timed out")),
            "{err:?}"
        );
        assert_eq!(posts_to(slow).len(), 1);
        assert_eq!(calls_to(slow).len(), 1);

        // Only the `always` rule is left.
        let left = em.create_faults();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].to, refused);
        em.clear_create_faults();
        assert!(em.create_faults().is_empty());
        for c in em.calls() {
            em.wait_call_done(&c.sid, DONE)
                .await
                .expect("every call ends");
        }
        em.shutdown().await;
    }

    /// A voxbridge stand-in on its own runtime, so that shutting the runtime down
    /// closes every socket at once, like `kill -9`.
    fn doomed_app() -> (tokio::runtime::Runtime, String) {
        use axum::extract::ws::{Message, WebSocketUpgrade};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = std_listener.local_addr().expect("addr").port();
        std_listener.set_nonblocking(true).expect("nonblocking");
        let twiml = format!(
            "<Response><Connect><Stream url=\"wss://127.0.0.1:{port}/media\"/></Connect></Response>"
        );
        rt.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(std_listener) else {
                return;
            };
            let app = Router::new()
                .route(
                    "/voice",
                    axum::routing::post(move || {
                        let twiml = twiml.clone();
                        async move { ([(header::CONTENT_TYPE, "text/xml")], twiml) }
                    }),
                )
                .route(
                    "/media",
                    axum::routing::get(|ws: WebSocketUpgrade| async move {
                        ws.on_upgrade(|mut socket| async move {
                            while let Some(Ok(m)) = socket.recv().await {
                                if matches!(m, Message::Close(_)) {
                                    break;
                                }
                            }
                        })
                    }),
                )
                .fallback(|| async { StatusCode::NO_CONTENT });
            let _ = axum::serve(listener, app).await;
        });
        (rt, format!("http://127.0.0.1:{port}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_end_cleanly_when_the_application_dies() {
        let (rt, app) = doomed_app();
        let em = emulator(TwilioEmulatorConfig {
            default_script: vec![CallerStep::Silence { ms: 20_000 }],
            ..TwilioEmulatorConfig::default()
        })
        .await;
        let tw = client(&em);
        let call = |ring_note: &str| CreateCall {
            status_callback: Some(format!("{app}/status?{ring_note}")),
            status_callback_events: vec!["initiated".into(), "ringing".into(), "answered".into()],
            ..create_to("+14155550121", &format!("{app}/voice"))
        };
        // One call streaming when the app dies…
        let streaming = tw
            .create_call(&call("streaming"))
            .await
            .expect("create")
            .sid;
        em.wait_status(&streaming, "in-progress", DONE)
            .await
            .expect("answered");
        let voice_ok = eventually(|| {
            em.call(&streaming)
                .is_some_and(|c| c.callbacks_of(CallbackKind::Voice).iter().any(|v| v.ok()))
        })
        .await;
        assert!(voice_ok, "voice webhook answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = em.call(&streaming).expect("call");
        assert_eq!(c.status, "in-progress", "{:?} {:?}", c.error, c.report);
        // …one still ringing (answered after the app is gone)…
        let ringing = tw.create_call(&call("ringing")).await.expect("create").sid;
        em.wait_status(&ringing, "ringing", DONE)
            .await
            .expect("ringing");
        rt.shutdown_background();
        // …and one created after it died.
        let late = tw.create_call(&call("late")).await.expect("create").sid;

        for sid in [&streaming, &ringing, &late] {
            let c = em.wait_call_done(sid, DONE).await.expect("the call ends");
            assert_eq!(c.status, "completed", "{sid}: {:?}", c.statuses());
            assert!(c.end_time.is_some());
            let last = c.status_callbacks().last().map(|cb| cb.param("CallStatus"));
            assert_eq!(last, Some(Some("completed")));
            assert!(
                !c.status_callbacks().last().is_some_and(|cb| cb.ok()),
                "app is down: {sid} {:?}",
                c.callbacks
            );
        }
        let streaming = em.call(&streaming).expect("streaming");
        // The media socket died under the caller: Twilio ends <Connect><Stream>.
        let end = streaming.report.as_ref().map(|r| r.end.clone());
        assert!(
            matches!(end, Some(caller::CallEnd::Disconnected(_))),
            "{end:?} {:?}",
            streaming.error
        );
        for sid in [&ringing, &late] {
            let c = em.call(sid).expect("call");
            assert!(
                c.error
                    .as_deref()
                    .is_some_and(|e| e.starts_with("voice webhook")),
                "{:?}",
                c.error
            );
        }
        assert_eq!(em.calls().len(), 3);
        em.shutdown().await;
    }

    async fn eventually(mut f: impl FnMut() -> bool) -> bool {
        for _ in 0..1000 {
            if f() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}
