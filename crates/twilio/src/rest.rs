//! Minimal Twilio REST client (API version `2010-04-01`) for the call lifecycle:
//! create an outbound call, update / hang up a live call, fetch its state, list calls
//! (to find out, after a crash or a lost response, whether a call was placed).
//!
//! * Form-encoded requests with Twilio's PascalCase parameter names; list parameters
//!   (`StatusCallbackEvent`, `RecordingStatusCallbackEvent`) are sent as **repeated keys**,
//!   booleans as lowercase `true`/`false`: byte-for-byte the same multiset of fields as the
//!   official `twilio` Python client (checked by `conformance/check_create_call.py`, which
//!   also validates every key against `CreateCallRequest` in twilio-oai's
//!   `twilio_api_v2010.json`).
//! * HTTP Basic auth: `AccountSid:AuthToken`, or `KeySid:KeySecret` for an API key (the
//!   account SID still goes in the path).
//! * Bounded retries with exponential backoff and jitter (see [`RetryPolicy`]). Creating a
//!   call is **not idempotent** (Twilio has no idempotency key for `Calls.json`), so
//!   `create_call` is retried only when the request provably did not start a call.
//! * Twilio's JSON error body (`{"code":21211,"message":..,"more_info":..,"status":400}`) is
//!   kept in [`TwilioError::Api`] and mapped to our machine codes by [`TwilioError::code`].

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::time::Duration;

use reqwest::header::{ACCEPT, HeaderMap, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// Production API base (`TWILIO_API_BASE` overrides it in the server's config).
pub const DEFAULT_API_BASE: &str = "https://api.twilio.com";
/// TCP + TLS connect timeout of every request.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-request timeout (connect, send, response headers and body).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Twilio documents a 4,000 character limit for the `Twiml` parameter.
pub const MAX_TWIML_LEN: usize = 4000;

/// Pages [`TwilioClient::list_calls`] follows when [`ListCalls::max_pages`] is unset.
pub const DEFAULT_MAX_LIST_PAGES: u32 = 20;
/// Twilio's largest `PageSize`.
pub const MAX_PAGE_SIZE: u32 = 1000;

const API_VERSION: &str = "2010-04-01";
const STATUS_CALLBACK_EVENTS: [&str; 4] = ["initiated", "ringing", "answered", "completed"];
const RECORDING_STATUS_CALLBACK_EVENTS: [&str; 3] = ["in-progress", "completed", "absent"];
const MACHINE_DETECTION: [&str; 2] = ["Enable", "DetectMessageEnd"];
const RECORDING_CHANNELS: [&str; 2] = ["mono", "dual"];
const HTTP_METHODS: [&str; 2] = ["GET", "POST"];
const UPDATE_STATUSES: [&str; 2] = ["completed", "canceled"];
/// `call_enum_status` of twilio-oai's `twilio_api_v2010.json`.
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

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Everything that can go wrong talking to Twilio.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TwilioError {
    /// Refused locally before anything was sent (missing/contradictory parameters, bad base URL).
    #[error("invalid Twilio request: {0}")]
    InvalidRequest(String),
    /// Twilio answered with a non-2xx status (after retries, if the status was retryable).
    #[error("Twilio API error: HTTP {status}{}: {message}", fmt_code(.code))]
    Api {
        status: u16,
        /// Twilio's error code (`21211`, `20003`, ..) when the body carried one.
        code: Option<u32>,
        message: String,
        more_info: Option<String>,
    },
    /// No usable HTTP response: connect error, timeout, reset (after retries).
    #[error("HTTP error talking to Twilio: {0}")]
    Http(String),
    /// A 2xx response whose body is not a call resource (or not a page of them).
    #[error("unexpected Twilio response: {0}")]
    Decode(String),
    /// A list had more pages than the caller allowed. An error rather than a short list,
    /// because a caller asking "was this number already dialed?" must not read a partial
    /// answer as "no".
    #[error("Twilio list has more than {max_pages} pages; narrow the filters")]
    TooManyPages { max_pages: u32 },
}

fn fmt_code(code: &Option<u32>) -> String {
    code.map(|c| format!(" (Twilio code {c})"))
        .unwrap_or_default()
}

impl TwilioError {
    /// Our stable machine code for API responses and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidRequest(_) => "INVALID_REQUEST",
            Self::Http(_) => "TWILIO_UNAVAILABLE",
            Self::Decode(_) => "TWILIO_BAD_RESPONSE",
            Self::TooManyPages { .. } => "TWILIO_LIST_TOO_LONG",
            Self::Api { status, code, .. } => match (code, status) {
                // 21211 invalid 'To', 21217 not a valid phone number, 13223/13224 invalid
                // phone number format / invalid number.
                (Some(21211 | 21217 | 13223 | 13224), _) => "INVALID_PHONE",
                // 21212 invalid 'From' (caller id), 21213 'From' required / not owned.
                (Some(21212 | 21213), _) => "INVALID_FROM",
                // 21215 geo permissions not enabled for the destination, 21216 blocked number.
                (Some(21215 | 21216), _) => "DESTINATION_NOT_ALLOWED",
                (Some(20003), _) | (None, 401) => "TWILIO_AUTH_FAILED",
                (Some(20404), _) | (None, 404) => "TWILIO_NOT_FOUND",
                (Some(20429), _) | (_, 429) => "TWILIO_RATE_LIMITED",
                (_, 400..=499) => "TWILIO_REJECTED",
                _ => "TWILIO_UNAVAILABLE",
            },
        }
    }

    /// HTTP status of an [`TwilioError::Api`] error.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Twilio's numeric error code, when it sent one.
    pub fn twilio_code(&self) -> Option<u32> {
        match self {
            Self::Api { code, .. } => *code,
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials and retry policy
// ---------------------------------------------------------------------------------------------

/// HTTP Basic credentials. The Basic user is the Account SID (auth token) or the API key SID.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    AccountToken { auth_token: String },
    ApiKey { key_sid: String, secret: String },
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AccountToken { .. } => f
                .debug_struct("AccountToken")
                .field("auth_token", &"<redacted>")
                .finish(),
            Self::ApiKey { key_sid, .. } => f
                .debug_struct("ApiKey")
                .field("key_sid", key_sid)
                .field("secret", &"<redacted>")
                .finish(),
        }
    }
}

/// Bounded retries with exponential backoff and "equal jitter".
///
/// What is retried:
/// * `429` (honouring `Retry-After` seconds, capped at `max_delay`) and `503`: always;
/// * other `5xx`, timeouts and connection resets: only for fetch / update / hangup;
/// * connect errors (the request never left the machine): always;
/// * other `4xx`: never.
///
/// Why `create_call` is stricter: Twilio has no idempotency key for `Calls.json`. A POST that
/// timed out waiting for the response (or got a 500/502/504 from some hop) may well have been
/// executed, and repeating it would ring the callee twice. A connect error means nothing was
/// sent; `429` and `503` mean Twilio refused the request before creating anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts including the first (`1` = no retries). Clamped to at least 1.
    pub max_attempts: u32,
    /// Nominal delay before the first retry; doubles on each further retry.
    pub base_delay: Duration,
    /// Upper bound of any single delay, including a server's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(4),
        }
    }
}

impl RetryPolicy {
    /// A single attempt, no retries.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Delay before retry number `retry` (1 = the first retry): a uniformly random value in
    /// `[d/2, d]` where `d = min(max_delay, base_delay * 2^(retry-1))`.
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = retry.saturating_sub(1).min(31);
        let nominal = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        let half = nominal / 2;
        half + half.mul_f64(jitter_unit())
    }

    /// Delay before retry `retry`, preferring the server's `Retry-After` (capped).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(ra) => ra.min(self.max_delay),
            None => self.backoff(retry),
        }
    }
}

/// A pseudo-random number in `[0, 1)`: std's randomly keyed SipHash, no extra dependency.
fn jitter_unit() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now()) >> 11;
    bits as f64 / (1u64 << 53) as f64
}

// ---------------------------------------------------------------------------------------------
// Requests and the call resource
// ---------------------------------------------------------------------------------------------

/// Parameters of `POST /2010-04-01/Accounts/{AccountSid}/Calls.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateCall {
    /// `To`: E.164 number, `sip:` URI or `client:` identity.
    pub to: String,
    /// `From`: a Twilio number (or verified caller id) of the account.
    pub from: String,
    /// `Url`: the TwiML webhook. Exactly one of `url` / `twiml`.
    pub url: Option<String>,
    /// `Twiml`: inline TwiML (at most [`MAX_TWIML_LEN`] characters).
    pub twiml: Option<String>,
    /// `Method` for `Url`: `GET` | `POST`.
    pub method: Option<String>,
    pub status_callback: Option<String>,
    /// `StatusCallbackEvent` (repeated): `initiated` `ringing` `answered` `completed`.
    pub status_callback_events: Vec<String>,
    /// `GET` | `POST`.
    pub status_callback_method: Option<String>,
    /// `Timeout`: seconds to let the phone ring.
    pub timeout_s: Option<u32>,
    /// `TimeLimit`: maximum call duration in seconds.
    pub time_limit_s: Option<u32>,
    /// `MachineDetection`: `Enable` | `DetectMessageEnd`.
    pub machine_detection: Option<String>,
    /// `AsyncAmd`: `true` / `false`.
    pub async_amd: Option<bool>,
    pub async_amd_status_callback: Option<String>,
    /// `Record=true` when set (omitted otherwise).
    pub record: bool,
    /// `RecordingChannels`: `mono` | `dual`.
    pub recording_channels: Option<String>,
    pub recording_status_callback: Option<String>,
    /// `RecordingStatusCallbackEvent` (repeated): `in-progress` `completed` `absent`.
    pub recording_status_callback_events: Vec<String>,
}

impl CreateCall {
    /// The exact form fields sent to Twilio, in a stable order; unset fields are omitted.
    /// Does not validate: [`TwilioClient::create_call`] calls [`CreateCall::validate`] first.
    pub fn form(&self) -> Vec<(String, String)> {
        let mut f = Form::default();
        f.push("To", &self.to);
        f.push("From", &self.from);
        f.opt("Url", &self.url);
        f.opt("Twiml", &self.twiml);
        f.opt("Method", &self.method);
        f.opt("StatusCallback", &self.status_callback);
        f.list("StatusCallbackEvent", &self.status_callback_events);
        f.opt("StatusCallbackMethod", &self.status_callback_method);
        if let Some(t) = self.timeout_s {
            f.push("Timeout", &t.to_string());
        }
        if let Some(t) = self.time_limit_s {
            f.push("TimeLimit", &t.to_string());
        }
        f.opt("MachineDetection", &self.machine_detection);
        if let Some(a) = self.async_amd {
            f.push("AsyncAmd", if a { "true" } else { "false" });
        }
        f.opt("AsyncAmdStatusCallback", &self.async_amd_status_callback);
        if self.record {
            f.push("Record", "true");
        }
        f.opt("RecordingChannels", &self.recording_channels);
        f.opt("RecordingStatusCallback", &self.recording_status_callback);
        f.list(
            "RecordingStatusCallbackEvent",
            &self.recording_status_callback_events,
        );
        f.0
    }

    /// Local checks that save a round trip (and a Twilio error) for requests that cannot work.
    pub fn validate(&self) -> Result<(), TwilioError> {
        non_empty("To", &self.to)?;
        non_empty("From", &self.from)?;
        match (&self.url, &self.twiml) {
            (Some(_), Some(_)) => return invalid("set exactly one of Url / Twiml, not both"),
            (None, None) => return invalid("one of Url / Twiml is required"),
            (Some(url), None) => http_url("Url", url)?,
            (None, Some(twiml)) => {
                non_empty("Twiml", twiml)?;
                if twiml.chars().count() > MAX_TWIML_LEN {
                    return invalid(format!(
                        "Twiml is longer than {MAX_TWIML_LEN} characters; serve it from a Url instead"
                    ));
                }
            }
        }
        one_of("Method", self.method.as_deref(), &HTTP_METHODS)?;
        opt_http_url("StatusCallback", &self.status_callback)?;
        for e in &self.status_callback_events {
            one_of("StatusCallbackEvent", Some(e), &STATUS_CALLBACK_EVENTS)?;
        }
        one_of(
            "StatusCallbackMethod",
            self.status_callback_method.as_deref(),
            &HTTP_METHODS,
        )?;
        one_of(
            "MachineDetection",
            self.machine_detection.as_deref(),
            &MACHINE_DETECTION,
        )?;
        opt_http_url("AsyncAmdStatusCallback", &self.async_amd_status_callback)?;
        one_of(
            "RecordingChannels",
            self.recording_channels.as_deref(),
            &RECORDING_CHANNELS,
        )?;
        opt_http_url("RecordingStatusCallback", &self.recording_status_callback)?;
        for e in &self.recording_status_callback_events {
            one_of(
                "RecordingStatusCallbackEvent",
                Some(e),
                &RECORDING_STATUS_CALLBACK_EVENTS,
            )?;
        }
        Ok(())
    }
}

/// Parameters of `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateCall {
    /// `completed` (hang up a live call) | `canceled` (cancel a queued/ringing call).
    pub status: Option<String>,
    /// New inline TwiML for the live call (ends a running `<Connect><Stream>`).
    pub twiml: Option<String>,
    /// New TwiML URL for the live call.
    pub url: Option<String>,
}

impl UpdateCall {
    /// The exact form fields (`Status`, `Twiml`, `Url`); unset fields are omitted.
    pub fn form(&self) -> Vec<(String, String)> {
        let mut f = Form::default();
        f.opt("Status", &self.status);
        f.opt("Twiml", &self.twiml);
        f.opt("Url", &self.url);
        f.0
    }

    /// At least one field; not both `Twiml` and `Url`; `Status` is `completed` | `canceled`.
    pub fn validate(&self) -> Result<(), TwilioError> {
        if self.status.is_none() && self.twiml.is_none() && self.url.is_none() {
            return invalid("update needs at least one of Status / Twiml / Url");
        }
        if self.twiml.is_some() && self.url.is_some() {
            return invalid("set at most one of Url / Twiml, not both");
        }
        one_of("Status", self.status.as_deref(), &UPDATE_STATUSES)?;
        if let Some(twiml) = &self.twiml {
            non_empty("Twiml", twiml)?;
            if twiml.chars().count() > MAX_TWIML_LEN {
                return invalid(format!("Twiml is longer than {MAX_TWIML_LEN} characters"));
            }
        }
        opt_http_url("Url", &self.url)
    }
}

/// Filters of `GET /2010-04-01/Accounts/{AccountSid}/Calls.json` ("read multiple call
/// resources"), newest first. Exists so that a dialer that lost a `create_call` response
/// (crash, timeout, 5xx) can ask Twilio whether the call was placed before trying again.
///
/// **Queued calls are invisible to the date filter.** Twilio's `StartTime` filters apply to
/// `start_time`, which stays empty until the call is dialed; a call still `queued` matches
/// `started_on_or_after` never. To see those too, also list with `status: Some("queued")`
/// and no date filter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListCalls {
    /// `To`: only calls to this number (E.164, `sip:` URI, `client:` identity).
    pub to: Option<String>,
    /// `From`: only calls from this number.
    pub from: Option<String>,
    /// `Status`: `queued` `ringing` `in-progress` `canceled` `completed` `failed` `busy`
    /// `no-answer`.
    pub status: Option<String>,
    /// `StartTime>` as `YYYY-MM-DD` (UTC): calls that started at or after midnight of that
    /// day. Twilio's filter has day granularity, so callers filter finer times themselves.
    pub started_on_or_after: Option<String>,
    /// `PageSize`: 1..=[`MAX_PAGE_SIZE`]; Twilio's default (50) when unset.
    pub page_size: Option<u32>,
    /// Pages to follow at most (default [`DEFAULT_MAX_LIST_PAGES`]); more pages than this is
    /// [`TwilioError::TooManyPages`], never a silently shortened list.
    pub max_pages: Option<u32>,
}

impl ListCalls {
    /// The query pairs of the first page, with Twilio's names (`StartTime>` is sent as
    /// `StartTime%3E=YYYY-MM-DD`, as the official clients do).
    pub fn query(&self) -> Vec<(String, String)> {
        let mut f = Form::default();
        f.opt("To", &self.to);
        f.opt("From", &self.from);
        f.opt("Status", &self.status);
        f.opt("StartTime>", &self.started_on_or_after);
        if let Some(n) = self.page_size {
            f.push("PageSize", &n.to_string());
        }
        f.0
    }

    /// Local checks: non-empty numbers, a known status, a `YYYY-MM-DD` date, a page size
    /// Twilio accepts, at least one page.
    pub fn validate(&self) -> Result<(), TwilioError> {
        for (name, v) in [("To", &self.to), ("From", &self.from)] {
            if let Some(v) = v {
                non_empty(name, v)?;
            }
        }
        one_of("Status", self.status.as_deref(), &CALL_STATUSES)?;
        if let Some(d) = &self.started_on_or_after
            && !is_ymd(d)
        {
            return invalid(format!("StartTime> {d:?} is not a YYYY-MM-DD date"));
        }
        if let Some(n) = self.page_size
            && !(1..=MAX_PAGE_SIZE).contains(&n)
        {
            return invalid(format!("PageSize {n} is not in 1..={MAX_PAGE_SIZE}"));
        }
        if self.max_pages == Some(0) {
            return invalid("max_pages must be at least 1");
        }
        Ok(())
    }
}

/// `YYYY-MM-DD` with a plausible month and day.
fn is_ymd(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' || !digits(0..4) {
        return false;
    }
    if !digits(5..7) || !digits(8..10) {
        return false;
    }
    let month = (b[5] - b'0') * 10 + (b[6] - b'0');
    let day = (b[8] - b'0') * 10 + (b[9] - b'0');
    (1..=12).contains(&month) && (1..=31).contains(&day)
}

/// One page of the list response; the paging fields other than `next_page_uri` are ignored.
#[derive(Deserialize)]
struct CallPage {
    calls: Vec<CallResource>,
    /// Relative to the API base (`/2010-04-01/Accounts/…`); `null` on the last page.
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// The subset of Twilio's call resource we use; unknown fields are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CallResource {
    pub sid: String,
    /// `queued` `ringing` `in-progress` `completed` `busy` `failed` `no-answer` `canceled`.
    pub status: String,
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub from: Option<String>,
    /// `inbound`, `outbound-api`, `outbound-dial`.
    #[serde(default)]
    pub direction: Option<String>,
    /// Seconds, as a string (Twilio sends `"15"`; a bare number is accepted too).
    #[serde(default, deserialize_with = "lenient_opt_string")]
    pub duration: Option<String>,
    /// AMD result (`human`, `machine_start`, ..), when machine detection ran.
    #[serde(default)]
    pub answered_by: Option<String>,
    /// RFC 2822, as Twilio sends it: when Twilio accepted the create request. Unlike
    /// `start_time` it is set for calls still `queued`, so a dialer reconciling after a
    /// lost response can match a call to its own attempt by time.
    #[serde(default)]
    pub date_created: Option<String>,
    /// RFC 2822 timestamps as Twilio sends them (`start_time` is empty until dialed).
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default)]
    pub end_time: Option<String>,
}

/// The subset of Twilio's conference participant resource we use.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ParticipantResource {
    /// The participant's own call.
    pub call_sid: String,
    pub conference_sid: String,
    #[serde(default)]
    pub status: Option<String>,
}

fn lenient_opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

#[derive(Default)]
struct Form(Vec<(String, String)>);

impl Form {
    fn push(&mut self, k: &str, v: &str) {
        self.0.push((k.to_owned(), v.to_owned()));
    }
    fn opt(&mut self, k: &str, v: &Option<String>) {
        if let Some(v) = v {
            self.push(k, v);
        }
    }
    fn list(&mut self, k: &str, vs: &[String]) {
        for v in vs {
            self.push(k, v);
        }
    }
}

fn invalid<T>(msg: impl Into<String>) -> Result<T, TwilioError> {
    Err(TwilioError::InvalidRequest(msg.into()))
}

fn non_empty(name: &str, v: &str) -> Result<(), TwilioError> {
    if v.trim().is_empty() {
        return invalid(format!("{name} must not be empty"));
    }
    Ok(())
}

fn one_of(name: &str, v: Option<&str>, allowed: &[&str]) -> Result<(), TwilioError> {
    match v {
        Some(v) if !allowed.contains(&v) => invalid(format!(
            "{name}={v:?} is not one of {}",
            allowed.join(" | ")
        )),
        _ => Ok(()),
    }
}

fn http_url(name: &str, v: &str) -> Result<(), TwilioError> {
    match url::Url::parse(v) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        _ => invalid(format!("{name}={v:?} is not an absolute http(s) URL")),
    }
}

fn opt_http_url(name: &str, v: &Option<String>) -> Result<(), TwilioError> {
    v.as_deref().map_or(Ok(()), |v| http_url(name, v))
}

/// Twilio SIDs are two letters + 32 hex digits; we only insist on path-safe characters.
fn path_safe(name: &str, v: &str) -> Result<(), TwilioError> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return invalid(format!("{name} {v:?} is not a Twilio SID"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The client
// ---------------------------------------------------------------------------------------------

/// Whether a request may be repeated after an ambiguous failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Replay {
    /// Fetch, update (same target state), hangup.
    Safe,
    /// Create call: repeat only when it certainly did not execute.
    OnlyIfNotExecuted,
}

/// Cheap to clone (the connection pool is shared).
#[derive(Clone, Debug)]
pub struct TwilioClient {
    base: String,
    account_sid: String,
    auth: Auth,
    http: reqwest::Client,
    retry: RetryPolicy,
}

impl TwilioClient {
    /// `base` is the API origin (`https://api.twilio.com`, or a fake in tests), optionally
    /// with a path prefix; a trailing `/` is ignored.
    pub fn new(base: &str, account_sid: &str, auth: Auth) -> Result<Self, TwilioError> {
        let parsed = url::Url::parse(base)
            .map_err(|e| TwilioError::InvalidRequest(format!("API base {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return invalid(format!(
                "API base {base:?} must be an http(s) origin without query or fragment"
            ));
        }
        path_safe("AccountSid", account_sid)?;
        match &auth {
            Auth::AccountToken { auth_token } => non_empty("auth token", auth_token)?,
            Auth::ApiKey { key_sid, secret } => {
                path_safe("API key SID", key_sid)?;
                non_empty("API key secret", secret)?;
            }
        }
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            account_sid: account_sid.to_owned(),
            auth,
            http: build_http(CONNECT_TIMEOUT, REQUEST_TIMEOUT)?,
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            max_attempts: policy.max_attempts.max(1),
            ..policy
        };
        self
    }

    /// Replace the default timeouts (connect 5 s, whole request 15 s).
    pub fn with_timeouts(
        mut self,
        connect: Duration,
        total: Duration,
    ) -> Result<Self, TwilioError> {
        self.http = build_http(connect, total)?;
        Ok(self)
    }

    pub fn account_sid(&self) -> &str {
        &self.account_sid
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    /// Place an outbound call. See [`RetryPolicy`] for why this is retried more cautiously.
    pub async fn create_call(&self, req: &CreateCall) -> Result<CallResource, TwilioError> {
        req.validate()?;
        let url = format!(
            "{}/{API_VERSION}/Accounts/{}/Calls.json",
            self.base, self.account_sid
        );
        self.execute(
            "create call",
            Method::POST,
            url,
            Some(req.form()),
            Replay::OnlyIfNotExecuted,
        )
        .await
    }

    /// Redirect (`Twiml`/`Url`) or end (`Status`) a call.
    pub async fn update_call(
        &self,
        call_sid: &str,
        req: &UpdateCall,
    ) -> Result<CallResource, TwilioError> {
        req.validate()?;
        let url = self.call_url(call_sid)?;
        self.execute(
            "update call",
            Method::POST,
            url,
            Some(req.form()),
            Replay::Safe,
        )
        .await
    }

    pub async fn fetch_call(&self, call_sid: &str) -> Result<CallResource, TwilioError> {
        let url = self.call_url(call_sid)?;
        self.execute("fetch call", Method::GET, url, None, Replay::Safe)
            .await
    }

    /// End a live call (`Status=completed`). A call that is still queued or ringing needs
    /// `Status=canceled` instead (use [`TwilioClient::update_call`]).
    pub async fn hangup(&self, call_sid: &str) -> Result<CallResource, TwilioError> {
        let req = UpdateCall {
            status: Some("completed".to_owned()),
            ..UpdateCall::default()
        };
        self.update_call(call_sid, &req).await
    }

    /// Every call matching `q`, newest first, following `next_page_uri` up to
    /// [`ListCalls::max_pages`] pages (duplicates across pages are dropped). Each page is a
    /// GET, retried like [`TwilioClient::fetch_call`]. See [`ListCalls`] for why queued
    /// calls do not match a date filter.
    pub async fn list_calls(&self, q: &ListCalls) -> Result<Vec<CallResource>, TwilioError> {
        q.validate()?;
        let max_pages = q.max_pages.unwrap_or(DEFAULT_MAX_LIST_PAGES);
        let first = format!(
            "{}/{API_VERSION}/Accounts/{}/Calls.json",
            self.base, self.account_sid
        );
        let mut url = url::Url::parse(&first)
            .map_err(|e| TwilioError::InvalidRequest(format!("list URL {first:?}: {e}")))?;
        let query = q.query();
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query.iter());
        }
        let mut next = Some(url.to_string());
        let mut calls: Vec<CallResource> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut pages = 0;
        while let Some(url) = next.take() {
            if pages >= max_pages {
                return Err(TwilioError::TooManyPages { max_pages });
            }
            pages += 1;
            let page: CallPage = self
                .execute("list calls", Method::GET, url, None, Replay::Safe)
                .await?;
            for call in page.calls {
                if seen.insert(call.sid.clone()) {
                    calls.push(call);
                }
            }
            next = match page.next_page_uri.filter(|u| !u.is_empty()) {
                Some(uri) => Some(self.next_page_url(&uri)?),
                None => None,
            };
        }
        Ok(calls)
    }

    /// `next_page_uri` is relative to the API base. An absolute URL is followed only when
    /// it points at our own base: the credentials must never go to another host.
    fn next_page_url(&self, uri: &str) -> Result<String, TwilioError> {
        if uri.starts_with('/') && !uri.starts_with("//") {
            Ok(format!("{}{uri}", self.base))
        } else if uri
            .strip_prefix(&self.base)
            .is_some_and(|rest| rest.starts_with('/'))
        {
            Ok(uri.to_owned())
        } else {
            Err(TwilioError::Decode(format!(
                "list calls: next_page_uri {:?} is not under the API base",
                snippet(uri.as_bytes())
            )))
        }
    }

    /// Add a participant to a conference (`POST …/Conferences/{sid or name}/Participants.json`):
    /// Twilio calls `to` from `from` and joins it to the conference when it answers. Used for
    /// warm transfers: the caller waits in the conference, the person is dialed in. Like a
    /// create-call, it is replayed only when it certainly did not execute.
    pub async fn add_participant(
        &self,
        conference: &str,
        from: &str,
        to: &str,
        end_conference_on_exit: bool,
        status_callback: Option<&str>,
    ) -> Result<ParticipantResource, TwilioError> {
        path_safe("Conference", conference)?;
        non_empty("From", from)?;
        non_empty("To", to)?;
        let url = format!(
            "{}/{API_VERSION}/Accounts/{}/Conferences/{conference}/Participants.json",
            self.base, self.account_sid
        );
        let mut form = Form::default();
        form.push("From", from);
        form.push("To", to);
        form.push("EarlyMedia", "true");
        form.push("Beep", "false");
        form.push(
            "EndConferenceOnExit",
            if end_conference_on_exit {
                "true"
            } else {
                "false"
            },
        );
        if let Some(cb) = status_callback {
            form.push("StatusCallback", cb);
        }
        self.execute(
            "add participant",
            Method::POST,
            url,
            Some(form.0),
            Replay::OnlyIfNotExecuted,
        )
        .await
    }

    fn call_url(&self, call_sid: &str) -> Result<String, TwilioError> {
        path_safe("CallSid", call_sid)?;
        Ok(format!(
            "{}/{API_VERSION}/Accounts/{}/Calls/{call_sid}.json",
            self.base, self.account_sid
        ))
    }

    fn request(&self, method: &Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self
            .http
            .request(method.clone(), url)
            .header(ACCEPT, "application/json");
        match &self.auth {
            Auth::AccountToken { auth_token } => rb.basic_auth(&self.account_sid, Some(auth_token)),
            Auth::ApiKey { key_sid, secret } => rb.basic_auth(key_sid, Some(secret)),
        }
    }

    async fn execute<T: DeserializeOwned>(
        &self,
        op: &'static str,
        method: Method,
        url: String,
        form: Option<Vec<(String, String)>>,
        replay: Replay,
    ) -> Result<T, TwilioError> {
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        loop {
            let mut rb = self.request(&method, &url);
            if let Some(form) = &form {
                rb = rb.form(form);
            }
            let (err, retryable, retry_after) = match rb.send().await {
                Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                    Ok(body) => {
                        return serde_json::from_slice::<T>(&body).map_err(|e| {
                            TwilioError::Decode(format!("{op}: {e}: {}", snippet(&body)))
                        });
                    }
                    // The status line arrived, so the request was executed.
                    Err(e) => (http_error(op, &e, attempt), replay == Replay::Safe, None),
                },
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = parse_retry_after(resp.headers());
                    // A body we cannot read still leaves the status meaningful.
                    let body = resp.bytes().await.unwrap_or_default();
                    let retryable = match status {
                        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => true,
                        s if s.is_server_error() => replay == Replay::Safe,
                        _ => false,
                    };
                    (api_error(status, &body), retryable, retry_after)
                }
                Err(e) => {
                    let retryable = e.is_connect()
                        || (replay == Replay::Safe && (e.is_timeout() || e.is_request()));
                    (http_error(op, &e, attempt), retryable, None)
                }
            };
            if !retryable || attempt >= max {
                if retryable {
                    tracing::warn!(op, attempt, error = %err, "twilio request failed, giving up");
                } else {
                    tracing::debug!(op, attempt, error = %err, "twilio request failed");
                }
                return Err(err);
            }
            let delay = self.retry.delay(attempt, retry_after);
            tracing::warn!(
                op,
                attempt,
                max_attempts = max,
                delay_ms = delay.as_millis() as u64,
                error = %err,
                "twilio request failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

fn build_http(connect: Duration, total: Duration) -> Result<reqwest::Client, TwilioError> {
    reqwest::Client::builder()
        .connect_timeout(connect)
        .timeout(total)
        .user_agent(concat!("voxbridge-twilio/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| TwilioError::Http(format!("building HTTP client: {}", error_chain(&e))))
}

fn http_error(op: &str, e: &reqwest::Error, attempt: u32) -> TwilioError {
    let kind = if e.is_connect() {
        "connect error"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "request failed"
    };
    TwilioError::Http(format!(
        "{op}: {kind} (attempt {attempt}): {}",
        error_chain(e)
    ))
}

/// `e` and its sources joined by `: ` (reqwest's own `Display` hides the cause).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_str = s.to_string();
        if !out.contains(&s_str) {
            out.push_str(": ");
            out.push_str(&s_str);
        }
        src = s.source();
    }
    out
}

/// `Retry-After` in delta-seconds (the HTTP-date form is ignored: backoff applies then).
fn parse_retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    code: Option<u32>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    more_info: Option<String>,
}

fn api_error(status: StatusCode, body: &[u8]) -> TwilioError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok();
    let (code, message, more_info) = match parsed {
        Some(b) => (b.code, b.message, b.more_info),
        None => (None, None, None),
    };
    let message = message.unwrap_or_else(|| {
        if body.is_empty() {
            status
                .canonical_reason()
                .unwrap_or("no error message")
                .to_owned()
        } else {
            snippet(body)
        }
    });
    TwilioError::Api {
        status: status.as_u16(),
        code,
        message,
        more_info,
    }
}

fn snippet(body: &[u8]) -> String {
    const MAX: usize = 200;
    let s = String::from_utf8_lossy(body);
    if s.chars().count() <= MAX {
        s.into_owned()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<u32>) -> TwilioError {
        TwilioError::Api {
            status,
            code,
            message: String::new(),
            more_info: None,
        }
    }

    #[test]
    fn machine_codes() {
        for c in [21211, 21217, 13223, 13224] {
            assert_eq!(api(400, Some(c)).code(), "INVALID_PHONE");
        }
        assert_eq!(api(400, Some(21212)).code(), "INVALID_FROM");
        assert_eq!(api(400, Some(21213)).code(), "INVALID_FROM");
        assert_eq!(api(401, Some(20003)).code(), "TWILIO_AUTH_FAILED");
        assert_eq!(api(401, None).code(), "TWILIO_AUTH_FAILED");
        assert_eq!(api(404, Some(20404)).code(), "TWILIO_NOT_FOUND");
        assert_eq!(api(400, Some(21215)).code(), "DESTINATION_NOT_ALLOWED");
        assert_eq!(api(400, Some(21216)).code(), "DESTINATION_NOT_ALLOWED");
        assert_eq!(api(429, Some(20429)).code(), "TWILIO_RATE_LIMITED");
        assert_eq!(api(429, None).code(), "TWILIO_RATE_LIMITED");
        assert_eq!(api(400, Some(21220)).code(), "TWILIO_REJECTED");
        assert_eq!(api(403, None).code(), "TWILIO_REJECTED");
        assert_eq!(api(500, None).code(), "TWILIO_UNAVAILABLE");
        assert_eq!(api(503, Some(20500)).code(), "TWILIO_UNAVAILABLE");
        assert_eq!(
            TwilioError::Http(String::new()).code(),
            "TWILIO_UNAVAILABLE"
        );
        assert_eq!(
            TwilioError::Decode(String::new()).code(),
            "TWILIO_BAD_RESPONSE"
        );
        assert_eq!(
            TwilioError::InvalidRequest(String::new()).code(),
            "INVALID_REQUEST"
        );
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy::default();
        for _ in 0..200 {
            let d1 = p.backoff(1);
            assert!(d1 >= Duration::from_millis(125) && d1 <= Duration::from_millis(250));
            let d3 = p.backoff(3);
            assert!(d3 >= Duration::from_millis(500) && d3 <= Duration::from_millis(1000));
            let d9 = p.backoff(9);
            assert!(d9 >= Duration::from_secs(2) && d9 <= Duration::from_secs(4));
            assert!(p.backoff(u32::MAX) <= p.max_delay);
        }
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(4)
        );
        assert_eq!(
            p.delay(1, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn jitter_varies() {
        let p = RetryPolicy::default();
        let distinct: std::collections::HashSet<_> = (0..50).map(|_| p.backoff(2)).collect();
        assert!(distinct.len() > 1);
    }

    #[test]
    fn error_body_parsing() {
        let e = api_error(
            StatusCode::BAD_REQUEST,
            br#"{"code":21211,"message":"Invalid 'To' Phone Number","more_info":"https://www.twilio.com/docs/errors/21211","status":400}"#,
        );
        assert_eq!(
            e,
            TwilioError::Api {
                status: 400,
                code: Some(21211),
                message: "Invalid 'To' Phone Number".to_owned(),
                more_info: Some("https://www.twilio.com/docs/errors/21211".to_owned()),
            }
        );
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(e.code(), "TWILIO_UNAVAILABLE");
        assert!(e.to_string().contains("bad gateway"), "{e}");
        let e = api_error(StatusCode::NOT_FOUND, b"");
        assert_eq!(e.code(), "TWILIO_NOT_FOUND");
    }

    // -- list_calls against a tiny local server ------------------------------------------

    const ACCOUNT: &str = "AC00000000000000000000000000000000";

    /// Serves `pages` in order (then the last one again) and records each raw query.
    struct PageServer {
        base: String,
        queries: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl PageServer {
        async fn start(pages: Vec<(u16, serde_json::Value)>) -> Self {
            use axum::http::Uri;
            use axum::response::IntoResponse;
            let queries = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let q = queries.clone();
            let pages = std::sync::Arc::new(pages);
            let app = axum::Router::new().fallback(move |uri: Uri| {
                let q = q.clone();
                let pages = pages.clone();
                async move {
                    let mut seen = q.lock().unwrap_or_else(|e| e.into_inner());
                    seen.push(format!(
                        "{}?{}",
                        uri.path(),
                        uri.query().unwrap_or_default()
                    ));
                    let i = (seen.len() - 1).min(pages.len() - 1);
                    let (status, body) = pages[i].clone();
                    let status = axum::http::StatusCode::from_u16(status)
                        .unwrap_or(axum::http::StatusCode::INTERNAL_SERVER_ERROR);
                    (status, axum::Json(body)).into_response()
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            Self {
                base: format!("http://{addr}"),
                queries,
            }
        }

        fn client(&self) -> TwilioClient {
            TwilioClient::new(
                &self.base,
                ACCOUNT,
                Auth::AccountToken {
                    auth_token: "token".into(),
                },
            )
            .expect("client")
            .with_retry(RetryPolicy {
                max_attempts: 3,
                base_delay: Duration::from_millis(5),
                max_delay: Duration::from_millis(20),
            })
        }

        fn queries(&self) -> Vec<String> {
            self.queries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        }
    }

    fn call(sid: &str) -> serde_json::Value {
        serde_json::json!({
            "sid": sid, "status": "completed", "to": "+14155550100", "from": "+14155550199",
            "date_created": "Sat, 21 Nov 2026 09:00:00 +0000",
            "start_time": "Sat, 21 Nov 2026 09:00:01 +0000", "end_time": null,
        })
    }

    fn page(sids: &[&str], next: Option<&str>) -> serde_json::Value {
        serde_json::json!({
            "calls": sids.iter().map(|s| call(s)).collect::<Vec<_>>(),
            "next_page_uri": next, "page": 0, "page_size": 2,
        })
    }

    #[tokio::test]
    async fn list_calls_sends_twilio_filters_and_follows_pages() {
        let next =
            format!("/{API_VERSION}/Accounts/{ACCOUNT}/Calls.json?PageSize=2&Page=1&PageToken=PAx");
        let server = PageServer::start(vec![
            (200, page(&["CA1", "CA2"], Some(&next))),
            // CA2 again (a page boundary that moved) is dropped.
            (200, page(&["CA2", "CA3"], None)),
        ])
        .await;
        let q = ListCalls {
            to: Some("+14155550100".into()),
            from: Some("+14155550199".into()),
            status: Some("completed".into()),
            started_on_or_after: Some("2026-11-21".into()),
            page_size: Some(2),
            max_pages: None,
        };
        let calls = server.client().list_calls(&q).await.expect("list");
        let sids: Vec<&str> = calls.iter().map(|c| c.sid.as_str()).collect();
        assert_eq!(sids, ["CA1", "CA2", "CA3"]);
        assert_eq!(
            calls[0].date_created.as_deref(),
            Some("Sat, 21 Nov 2026 09:00:00 +0000")
        );
        let queries = server.queries();
        assert_eq!(
            queries[0],
            format!(
                "/{API_VERSION}/Accounts/{ACCOUNT}/Calls.json?To=%2B14155550100&From=%2B14155550199\
                 &Status=completed&StartTime%3E=2026-11-21&PageSize=2"
            )
        );
        assert_eq!(queries[1], next);
        assert_eq!(queries.len(), 2);
    }

    #[tokio::test]
    async fn list_calls_retries_server_errors_and_bounds_pages() {
        let next = format!("/{API_VERSION}/Accounts/{ACCOUNT}/Calls.json?Page=1");
        let server = PageServer::start(vec![
            (500, serde_json::json!({"code": 20500, "message": "oops"})),
            (200, page(&["CA1"], Some(&next))),
        ])
        .await;
        let q = ListCalls {
            max_pages: Some(3),
            ..ListCalls::default()
        };
        let err = server.client().list_calls(&q).await.expect_err("endless");
        assert_eq!(err, TwilioError::TooManyPages { max_pages: 3 });
        assert_eq!(err.code(), "TWILIO_LIST_TOO_LONG");
        // One 500 retried, then three pages.
        assert_eq!(server.queries().len(), 4);
    }

    #[tokio::test]
    async fn list_calls_never_follows_a_foreign_next_page() {
        let server = PageServer::start(vec![(
            200,
            page(&["CA1"], Some("https://evil.example/2010-04-01/x.json")),
        )])
        .await;
        let err = server
            .client()
            .list_calls(&ListCalls::default())
            .await
            .expect_err("foreign host");
        assert_eq!(err.code(), "TWILIO_BAD_RESPONSE", "{err}");
        assert_eq!(server.queries().len(), 1);
    }

    #[tokio::test]
    async fn list_calls_decodes_errors_and_bad_pages() {
        let server = PageServer::start(vec![(200, serde_json::json!({"nope": []}))]).await;
        let err = server
            .client()
            .list_calls(&ListCalls::default())
            .await
            .expect_err("not a page");
        assert_eq!(err.code(), "TWILIO_BAD_RESPONSE");
        let server = PageServer::start(vec![(
            401,
            serde_json::json!({"code": 20003, "message": "Authenticate", "status": 401}),
        )])
        .await;
        let err = server
            .client()
            .list_calls(&ListCalls::default())
            .await
            .expect_err("401");
        assert_eq!(err.code(), "TWILIO_AUTH_FAILED");
        assert_eq!(server.queries().len(), 1, "4xx is not retried");
    }

    #[test]
    fn list_calls_validation() {
        let ok = ListCalls::default();
        assert!(ok.validate().is_ok());
        assert!(ok.query().is_empty());
        let bad = |q: ListCalls| q.validate().expect_err("invalid").code();
        for d in [
            "2026-1-21",
            "21-11-2026",
            "2026-13-01",
            "2026-11-32",
            "2026-11-21T00:00",
        ] {
            let q = ListCalls {
                started_on_or_after: Some(d.into()),
                ..ListCalls::default()
            };
            assert_eq!(bad(q), "INVALID_REQUEST", "{d}");
        }
        for n in [0, MAX_PAGE_SIZE + 1] {
            let q = ListCalls {
                page_size: Some(n),
                ..ListCalls::default()
            };
            assert_eq!(bad(q), "INVALID_REQUEST");
        }
        let q = ListCalls {
            status: Some("answered".into()),
            ..ListCalls::default()
        };
        assert_eq!(bad(q), "INVALID_REQUEST");
        let q = ListCalls {
            to: Some(" ".into()),
            ..ListCalls::default()
        };
        assert_eq!(bad(q), "INVALID_REQUEST");
        let q = ListCalls {
            max_pages: Some(0),
            ..ListCalls::default()
        };
        assert_eq!(bad(q), "INVALID_REQUEST");
    }

    #[test]
    fn auth_debug_is_redacted() {
        let a = Auth::ApiKey {
            key_sid: "SK1".into(),
            secret: "hunter2".into(),
        };
        let t = Auth::AccountToken {
            auth_token: "hunter2".into(),
        };
        assert!(!format!("{a:?}{t:?}").contains("hunter2"));
    }
}
