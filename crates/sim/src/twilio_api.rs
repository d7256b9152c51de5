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
//! # Call updates, `<Dial>` and conferences
//!
//! `POST …/Calls/{Sid}.json` with `Twiml` or `Url` (+ `Method`) redirects a call
//! the way Twilio does: whatever the call is executing stops — a running
//! `<Connect><Stream>` ends, so voxbridge's media socket gets `stop` and a
//! close — and the new document runs ([`crate::twiml_exec`] lists the verbs
//! understood). A redirect of a call that is not answered yet is kept and runs
//! when it answers. `Url` is fetched like the voice webhook (signed, same
//! params, [`CallbackKind::Redirect`]). The document the call was created with
//! still only has its `<Connect><Stream>` played (nothing before or after it).
//! A redirect of a `<Dial>` leg or a participant call is recorded in
//! [`EmulatedCall::updates`] but not executed: the emulated person goes on.
//!
//! `<Dial>` to `<Number>`s / `<Sip>` URIs (or a bare number) creates one child
//! call per target (`direction: outbound-dial`, `parent_call_sid`, listed by
//! `GET …/Calls.json`, filter `ParentCallSid`), played by an emulated person
//! configured per target with [`TwilioEmulatorConfig::dial_outcomes`]
//! ([`DialOutcome`]; the default answers and hangs up after 1 s). Several
//! targets ring at once and the first to answer wins. When the `<Dial>` ends,
//! its `action` URL (relative URLs resolved against the document's URL) gets a
//! signed request with `DialCallStatus` (`completed` after a bridged call,
//! `busy`, `no-answer`, `failed`, `canceled`; `answered` for a conference),
//! `DialCallSid` and `DialCallDuration`, and the TwiML it returns runs next;
//! without `action` the document continues after `<Dial>`, and the call ends
//! `completed` when nothing is left. A REST hang-up during the `<Dial>` still
//! requests the `action` (`CallStatus=completed`) and ignores its answer; a
//! redirect abandons the `<Dial>` without requesting it.
//!
//! `<Dial><Conference>name</Conference></Dial>` joins the conference of that
//! name (created on first join). A conference is `init` until two participants
//! are in it and one of them has `startConferenceOnEnter`, then
//! `in-progress`; it is `completed` when its last participant leaves, when a
//! participant with `endConferenceOnExit` leaves, or on `POST
//! …/Conferences/{Sid}.json` `Status=completed`; then every participant leaves
//! (a `<Dial>` participant continues its TwiML, a participant call hangs up).
//! The REST resources `Conferences` (list with `FriendlyName`, `Status`,
//! `DateCreated*`, `DateUpdated*`; fetch; update) and `Participants` (list with
//! `Muted`, `Hold`; create, which dials `To` like a `<Dial>` leg and joins the
//! conference when answered, creating it when the path names a conference by
//! friendly name; fetch / update `Hold` `Muted` `EndConferenceOnExit` / delete
//! = kick, by call SID or label) answer like Twilio's; participants that left
//! are not listed, as on Twilio, but stay in [`TwilioEmulator::conferences`]
//! with their join and leave times.
//!
//! A document that is not well-formed (or whose root is not `<Response>`) is
//! Twilio's "application error": the call records error 12100
//! ([`EmulatedCall::error_code`]) and ends `completed`; a redirect or `action`
//! URL that cannot be fetched is error 11200, likewise.
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

use crate::caller::{self, CallEnd, CallerConfig, CallerReport, CallerStep, RunOptions};
use crate::twiml_exec::{self, ConferenceTarget, Dial, DialTarget, Verb};

const API_VERSION: &str = "2010-04-01";
/// Timeout of one callback / voice webhook request (Twilio's is 15 s).
const CALLBACK_TIMEOUT: Duration = Duration::from_secs(10);
const INITIATE_MS: u64 = 10;
const RING_AFTER_MS: u64 = 50;
const BUSY_AFTER_MS: u64 = 100;
const FAIL_AFTER_MS: u64 = 50;
const AMD_AFTER_MS: u64 = 200;
/// How often waits on other calls (dialed legs, conferences) look again.
const POLL_MS: u64 = 10;
/// Upper bound on waiting for dialed legs to send their last callbacks.
const LEGS_DONE_TIMEOUT: Duration = Duration::from_secs(15);
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

/// What the person reached by a `<Dial>` leg or a conference participant call does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialOutcome {
    /// Answers after [`TwilioEmulatorConfig::ring_ms`], stays on for `stay_ms`
    /// (bounded by `<Dial timeLimit>` / `TimeLimit`), then hangs up.
    /// `u64::MAX`: stays until the other side ends the call.
    Answer { stay_ms: u64 },
    /// Final status `busy`.
    Busy,
    /// Rings until the `<Dial timeout>` (or `Timeout`), final status `no-answer`.
    NoAnswer,
    /// Final status `failed` (never rings).
    Fail,
}

impl Default for DialOutcome {
    /// Answers and hangs up after 1 s.
    fn default() -> Self {
        DialOutcome::Answer { stay_ms: 1000 }
    }
}

/// What a [`DialedLeg`] dialed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DialKind {
    Number,
    Sip,
    Conference,
}

impl DialKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DialKind::Number => "number",
            DialKind::Sip => "sip",
            DialKind::Conference => "conference",
        }
    }
}

/// One target of a `<Dial>` a call executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DialedLeg {
    /// The number, SIP URI or conference name.
    pub to: String,
    pub kind: DialKind,
    /// The child call's status (`queued` … `completed`, `busy`, …); for a
    /// conference `in-progress` while the call is in it, then `completed`.
    pub status: String,
    /// The child call's SID (`CA…`, see [`TwilioEmulator::call`]), or the conference's (`CF…`).
    pub sid: String,
    /// `From` of the child call (`callerId`, default the parent's `From`).
    pub caller_id: String,
    pub timeout_secs: u64,
    /// The `<Dial action>` as written.
    pub action: Option<String>,
    /// The `DialCallStatus` of the `<Dial>` this leg belonged to, once it ended.
    pub dial_call_status: Option<String>,
    pub started_at: SystemTime,
    pub answered_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    /// Whole seconds answered (child calls), once ended.
    pub duration: Option<u64>,
}

/// Where a TwiML document a call executed came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwimlSource {
    /// `Twiml` / `Url` of the create request (only its `<Connect><Stream>` is played).
    Create,
    /// `Twiml` / `Url` of a call update.
    Update,
    /// A `<Redirect>`.
    Redirect,
    /// The response of a `<Dial action>`.
    DialAction,
}

/// One TwiML document a call executed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExecutedTwiml {
    pub source: TwimlSource,
    /// The URL it was fetched from (None for `Twiml=`).
    pub url: Option<String>,
    pub twiml: String,
    pub at: SystemTime,
    /// The verbs started, in order (for [`TwimlSource::Create`]: `Connect` once the stream ran).
    pub verbs: Vec<String>,
    /// What Twilio would log as warnings (skipped verbs, bad attribute values).
    pub warnings: Vec<String>,
    /// The Twilio error that stopped it (12100 for a malformed document).
    pub error: Option<u32>,
}

/// A conference participant, present or past.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Participant {
    pub call_sid: String,
    pub label: Option<String>,
    /// `queued` `connecting` `ringing` `connected` `complete` `failed`.
    pub status: String,
    pub hold: bool,
    pub muted: bool,
    pub coaching: bool,
    pub start_conference_on_enter: bool,
    pub end_conference_on_exit: bool,
    pub beep: String,
    pub early_media: bool,
    /// Added with `POST …/Participants.json` (else: by `<Dial><Conference>`).
    pub via_api: bool,
    /// Removed with `DELETE …/Participants/{CallSid}.json`.
    pub kicked: bool,
    pub date_created: SystemTime,
    pub date_updated: SystemTime,
    pub joined_at: Option<SystemTime>,
    pub left_at: Option<SystemTime>,
}

impl Participant {
    /// Not yet joined, or in the conference.
    pub fn active(&self) -> bool {
        !matches!(self.status.as_str(), "complete" | "failed")
    }
}

/// A conference, with every participant it had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conference {
    /// `CF…`.
    pub sid: String,
    pub friendly_name: String,
    /// `init` `in-progress` `completed`.
    pub status: String,
    pub date_created: SystemTime,
    pub date_updated: SystemTime,
    pub started_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    /// `conference-ended-via-api`, `participant-with-end-conference-on-exit-left`,
    /// `participant-with-end-conference-on-exit-kicked`, `last-participant-left`,
    /// `last-participant-kicked`.
    pub reason_conference_ended: Option<String>,
    pub call_sid_ending_conference: Option<String>,
    /// In order of joining (or of creation for participant calls).
    pub participants: Vec<Participant>,
}

impl Conference {
    /// The participants not yet joined or still in the conference.
    pub fn active_participants(&self) -> Vec<&Participant> {
        self.participants.iter().filter(|p| p.active()).collect()
    }

    /// The participant record of `call_sid` (the latest, if it joined twice).
    pub fn participant(&self, call_sid: &str) -> Option<&Participant> {
        self.participants
            .iter()
            .rev()
            .find(|p| p.call_sid == call_sid)
    }
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
    /// What the person reached by a `<Dial>` leg or a participant call does, per
    /// number / SIP URI (exact match; bare US numbers are normalised to E.164
    /// first). [`TwilioEmulator::set_dial_outcome`] changes it at run time.
    pub dial_outcomes: Vec<(String, DialOutcome)>,
    /// For targets not in `dial_outcomes`.
    pub default_dial_outcome: DialOutcome,
    /// How long `<Say>` takes per character of its text, ms.
    pub say_ms_per_char: u64,
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
            dial_outcomes: Vec::new(),
            default_dial_outcome: DialOutcome::default(),
            say_ms_per_char: 10,
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
    /// TwiML fetched for a call update `Url` or a `<Redirect>`.
    Redirect,
    /// A `<Dial action>` request.
    DialAction,
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
    /// `outbound-api` (created with the REST API, participant calls included) or
    /// `outbound-dial` (a `<Dial>` leg).
    pub direction: String,
    /// The call whose `<Dial>` created this one.
    pub parent_call_sid: Option<String>,
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
    /// The first media session's report, once it ended.
    pub report: Option<CallerReport>,
    /// Every media session's report (a redirect to `<Connect><Stream>` starts another).
    pub stream_reports: Vec<CallerReport>,
    /// Why the media session did not run (bad TwiML, webhook error, WebSocket rejected, …).
    pub error: Option<String>,
    /// The Twilio error that ended the call early: 11200 (TwiML could not be
    /// fetched), 11100 (bad URL), 12100 (malformed TwiML).
    pub error_code: Option<u32>,
    /// The TwiML documents the call executed, in order.
    pub twiml_executed: Vec<ExecutedTwiml>,
    /// The texts of the `<Say>`s it executed.
    pub said: Vec<String>,
    /// What its `<Dial>`s dialed, in order.
    pub dialed: Vec<DialedLeg>,
    /// Every callback due has been sent and the call is over.
    pub done: bool,
}

impl EmulatedCall {
    fn new(
        sid: String,
        to: &str,
        from: &str,
        params: Vec<(String, String)>,
        direction: &str,
        parent_call_sid: Option<String>,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            sid,
            to: to.to_string(),
            from: from.to_string(),
            direction: direction.to_string(),
            parent_call_sid,
            params,
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
            stream_reports: Vec::new(),
            error: None,
            error_code: None,
            twiml_executed: Vec::new(),
            said: Vec::new(),
            dialed: Vec::new(),
            done: false,
        }
    }

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

/// A call update's new TwiML, not yet executed.
#[derive(Clone, Debug)]
enum Redirect {
    Twiml(String),
    Url { url: String, method: String },
}

struct Slot {
    call: EmulatedCall,
    hangup: watch::Sender<bool>,
    /// Next status callback `SequenceNumber`.
    seq: u64,
    answered_at: Option<Instant>,
    ended_at: Option<Instant>,
    /// The latest redirect not yet executed.
    pending: Option<Redirect>,
    /// Bumped by every redirect: what the call is executing stops.
    interrupt: watch::Sender<u64>,
}

impl Slot {
    fn new(call: EmulatedCall) -> Self {
        Self {
            call,
            hangup: watch::channel(false).0,
            seq: 0,
            answered_at: None,
            ended_at: None,
            pending: None,
            interrupt: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct EmState {
    requests: Vec<RecordedRequest>,
    calls: Vec<Slot>,
    /// Per `To` number, consulted when a call is dialed (starts as the config's).
    outcomes: Vec<(String, Outcome)>,
    /// Per dialed target (starts as the config's).
    dial_outcomes: Vec<(String, DialOutcome)>,
    /// Create faults with their remaining uses (starts as the config's).
    create_faults: Vec<CreateFaultRule>,
    /// Every conference, in order of creation.
    conferences: Vec<Conference>,
}

impl EmState {
    fn slot(&mut self, sid: &str) -> Option<&mut Slot> {
        self.calls.iter_mut().find(|s| s.call.sid == sid)
    }

    fn call_ref(&self, sid: &str) -> Option<&EmulatedCall> {
        self.calls
            .iter()
            .find(|s| s.call.sid == sid)
            .map(|s| &s.call)
    }

    /// A copy of `c` with its dialed legs brought up to date from the child calls.
    fn snapshot(&self, c: &EmulatedCall) -> EmulatedCall {
        let mut c = c.clone();
        for leg in &mut c.dialed {
            if leg.kind == DialKind::Conference {
                continue;
            }
            if let Some(child) = self.call_ref(&leg.sid) {
                leg.status = child.status.clone();
                leg.answered_at = child.answer_time;
                leg.ended_at = child.end_time;
                leg.duration = child.duration;
            }
        }
        c
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
            dial_outcomes: cfg.dial_outcomes.clone(),
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

    /// Every call created so far (`<Dial>` legs and participant calls included),
    /// in order of creation.
    pub fn calls(&self) -> Vec<EmulatedCall> {
        let st = self.inner.lock();
        st.calls.iter().map(|s| st.snapshot(&s.call)).collect()
    }

    /// One call, as it is now.
    pub fn call(&self, sid: &str) -> Option<EmulatedCall> {
        let st = self.inner.lock();
        let c = &st.calls.iter().find(|s| s.call.sid == sid)?.call;
        Some(st.snapshot(c))
    }

    /// What the person reached at `to` (number or SIP URI) by a `<Dial>` or a
    /// participant call does, for legs dialed after this.
    pub fn set_dial_outcome(&self, to: &str, outcome: DialOutcome) {
        let mut st = self.inner.lock();
        st.dial_outcomes.retain(|(n, _)| n != to);
        st.dial_outcomes.push((to.to_owned(), outcome));
    }

    /// What the call's `<Dial>`s dialed so far (empty for an unknown sid).
    pub fn dialed(&self, call_sid: &str) -> Vec<DialedLeg> {
        self.call(call_sid).map(|c| c.dialed).unwrap_or_default()
    }

    /// The TwiML documents the call executed so far.
    pub fn twiml_executed(&self, call_sid: &str) -> Vec<ExecutedTwiml> {
        self.call(call_sid)
            .map(|c| c.twiml_executed)
            .unwrap_or_default()
    }

    /// Every conference so far, in order of creation.
    pub fn conferences(&self) -> Vec<Conference> {
        self.inner.lock().conferences.clone()
    }

    /// The conference with this SID, or the latest one with this friendly name.
    pub fn conference(&self, name_or_sid: &str) -> Option<Conference> {
        let st = self.inner.lock();
        st.conferences
            .iter()
            .rev()
            .find(|c| c.sid == name_or_sid || c.friendly_name == name_or_sid)
            .cloned()
    }

    /// Wait until the call has dialed something; returns its legs then (`None`
    /// on timeout or an unknown sid).
    pub async fn wait_dialed(&self, call_sid: &str, timeout: Duration) -> Option<Vec<DialedLeg>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let legs = self.call(call_sid)?.dialed;
            if !legs.is_empty() {
                return Some(legs);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }

    /// Wait until [`TwilioEmulator::conference`]`(name_or_sid)` exists with `status`.
    pub async fn wait_conference(
        &self,
        name_or_sid: &str,
        status: &str,
        timeout: Duration,
    ) -> Option<Conference> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = self.conference(name_or_sid).filter(|c| c.status == status) {
                return Some(c);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
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
    if r.status == 204 {
        return StatusCode::NO_CONTENT.into_response();
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
        if tail == "Conferences.json" || tail.starts_with("Conferences/") {
            return self.conference_route(method, path, query, tail, form);
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
        let sid = random_sid("CA");
        let call = EmulatedCall::new(sid.clone(), to, from, form.to_vec(), "outbound-api", None);
        let body = self.resource(&call);
        self.lock().calls.push(Slot::new(call));
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
        if let Some(u) = first(form, "Url")
            && !is_http_url(u)
        {
            return twilio_error(400, 21205, format!("Url is not a valid URL: {u}"));
        }
        if first(form, "Twiml").is_some_and(|t| t.trim().is_empty()) {
            return twilio_error(400, 21205, "Twiml must not be empty.");
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
                if redirect {
                    // Whatever runs (a <Connect><Stream>, a <Dial>…) stops and the new
                    // TwiML runs; a call not answered yet runs it when it answers.
                    slot.pending = Some(match (first(form, "Twiml"), first(form, "Url")) {
                        (Some(t), _) => Redirect::Twiml(t.to_string()),
                        (None, u) => Redirect::Url {
                            url: u.unwrap_or_default().to_string(),
                            method: if first(form, "Method")
                                .is_some_and(|m| m.eq_ignore_ascii_case("GET"))
                            {
                                "GET".into()
                            } else {
                                "POST".into()
                            },
                        },
                    });
                    slot.interrupt.send_modify(|n| *n += 1);
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
            "direction": c.direction,
            "duration": c.duration.map(|d| d.to_string()),
            "end_time": time(c.end_time),
            "forwarded_from": null,
            "from": c.from,
            "from_formatted": c.from,
            "group_sid": null,
            "parent_call_sid": c.parent_call_sid,
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
    direction: String,
    parent_call_sid: Option<String>,
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
            direction: c.direction.clone(),
            parent_call_sid: c.parent_call_sid.clone(),
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

/// How a dialed phone behaves while it rings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ring {
    Answer,
    Busy,
    NoAnswer,
    Fail,
}

async fn dial(em: Arc<Inner>, sid: String) {
    let (plan, mut hang, intr) = {
        let mut st = em.lock();
        let Some(slot) = st.slot(&sid) else { return };
        (
            CallPlan::new(&slot.call),
            slot.hangup.subscribe(),
            slot.interrupt.subscribe(),
        )
    };
    let outcome = em
        .lock()
        .outcomes
        .iter()
        .find(|(n, _)| *n == plan.to)
        .map_or(Outcome::Answer, |(_, o)| o.clone());
    let ring = match outcome {
        Outcome::Busy => Ring::Busy,
        Outcome::NoAnswer => Ring::NoAnswer,
        Outcome::Fail => Ring::Fail,
        _ => Ring::Answer,
    };
    if em.ring(&plan, ring, em.cfg.ring_ms, &mut hang).await {
        em.in_progress(&plan, &outcome, hang, intr).await;
    }
    em.finish(&plan).await;
}

impl Inner {
    /// Dial: `initiated`, `ringing`, then answered (`in-progress`, returns true) or a
    /// final status. `no_answer_ms`: how long [`Ring::NoAnswer`] rings.
    async fn ring(
        &self,
        plan: &CallPlan,
        ring: Ring,
        no_answer_ms: u64,
        hang: &mut watch::Receiver<bool>,
    ) -> bool {
        let sid = &plan.sid;
        if hung_up_during(hang, INITIATE_MS).await || !self.transition(sid, "initiated") {
            return false;
        }
        self.status_callback(plan, "initiated", "initiated", Vec::new())
            .await;
        if ring == Ring::Fail {
            if !hung_up_during(hang, FAIL_AFTER_MS).await {
                self.end(sid, "failed");
            }
            return false;
        }
        if hung_up_during(hang, RING_AFTER_MS).await || !self.transition(sid, "ringing") {
            return false;
        }
        self.status_callback(plan, "ringing", "ringing", Vec::new())
            .await;
        let (wait, final_status) = match ring {
            Ring::Busy => (BUSY_AFTER_MS, Some("busy")),
            Ring::NoAnswer => (no_answer_ms, Some("no-answer")),
            _ if self.cfg.ring_ms >= plan.timeout_ms => (plan.timeout_ms, Some("no-answer")),
            _ => (self.cfg.ring_ms, None),
        };
        if hung_up_during(hang, wait).await {
            return false;
        }
        match final_status {
            Some(s) => {
                self.end(sid, s);
                false
            }
            None => self.transition(sid, "in-progress"),
        }
    }

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
        st.participant_progress(sid, status);
        true
    }

    fn end(&self, sid: &str, status: &str) {
        let mut st = self.lock();
        if let Some(slot) = st.slot(sid) {
            end_slot(slot, status);
        }
        st.participant_progress(sid, status);
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
        intr: watch::Receiver<u64>,
    ) {
        // `DetectMessageEnd` waits for the end of the greeting (the beep) and says so;
        // `Enable` answers as soon as it recognises a machine.
        let amd = match (outcome, plan.machine_detection.as_deref()) {
            (Outcome::Machine, Some("DetectMessageEnd")) => "machine_end_beep",
            (Outcome::Machine, _) => "machine_start",
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

        let script = match outcome {
            Outcome::AnswerWithScript(s) => s.clone(),
            _ => self.cfg.default_script.clone(),
        };
        let mut x = Exec {
            plan,
            script,
            hang,
            intr,
        };
        // Redirected before it answered: the update's TwiML replaces the create's.
        if self
            .with_call(&plan.sid, |s| s.pending.is_some())
            .unwrap_or(false)
        {
            self.run_updates(&mut x).await;
            return;
        }

        let connect_from;
        let twiml = match (&plan.twiml, &plan.url) {
            (Some(t), _) => {
                connect_from = self.cfg.webhook_base.clone();
                t.clone()
            }
            (None, Some(url)) => {
                connect_from = self.reachable(url).ok().map(|u| u.to_string());
                let mut form = self.voice_params(plan, "in-progress");
                if sync_amd {
                    form.push(("AnsweredBy".into(), amd.into()));
                }
                let sent = self
                    .send(&plan.sid, CallbackKind::Voice, url, &plan.method, form)
                    .await;
                if let Some(e) = sent.error {
                    self.with_call(&plan.sid, |s| {
                        s.call.error = Some(format!("voice webhook: {e}"));
                        s.call.error_code = Some(11200);
                    });
                    return;
                }
                sent.response_body
            }
            (None, None) => return,
        };
        let record = self.record_twiml(&plan.sid, TwimlSource::Create, plan.url.clone(), &twiml);
        let connect_base = self.connect_base(connect_from.as_deref());
        let stop = self.stream_stop(&x.hang, &x.intr);
        let ccfg = CallerConfig {
            voice_url: plan.url.clone().unwrap_or_default(),
            public_url: String::new(),
            auth_token: Some(self.cfg.auth_token.clone()),
            connect_base,
            account_sid: self.cfg.account_sid.clone(),
            call_sid: plan.sid.clone(),
            from: plan.from.clone(),
            to: plan.to.clone(),
            direction: plan.direction.clone(),
            script: x.script.clone(),
            twiml: Some(twiml),
            hangup: Some(stop),
            ..CallerConfig::default()
        };
        let result = caller::run_call_with(ccfg, self.cfg.run_options.clone()).await;
        self.with_call(&plan.sid, |s| match result {
            Ok(r) => {
                if let Some(rec) = s.call.twiml_executed.get_mut(record) {
                    rec.verbs.push("Connect".into());
                }
                s.call.stream_reports.push(r.clone());
                s.call.report = Some(r);
            }
            Err(e) => s.call.error = Some(e.to_string()),
        });
        // The stream ended: a redirect runs its TwiML; otherwise the call is over
        // (nothing after <Connect> is executed for the create document).
        self.run_updates(&mut x).await;
    }

    /// Where a `<Stream>`'s host is reached: `connect_base`, or derived from the
    /// URL the TwiML came from (`http` → `ws`, `https` → `wss`, same host and port).
    fn connect_base(&self, from: Option<&str>) -> Option<String> {
        self.cfg.connect_base.clone().or_else(|| {
            let u = url::Url::parse(from?).ok()?;
            let scheme = if u.scheme() == "https" { "wss" } else { "ws" };
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            Some(format!("{scheme}://{}{port}", u.host_str()?))
        })
    }

    /// The voice webhook's params for this call, with `CallStatus`.
    fn voice_params(&self, plan: &CallPlan, call_status: &str) -> Vec<(String, String)> {
        let mut form = caller::webhook_params(&CallerConfig {
            account_sid: self.cfg.account_sid.clone(),
            call_sid: plan.sid.clone(),
            from: plan.from.clone(),
            to: plan.to.clone(),
            direction: plan.direction.clone(),
            ..CallerConfig::default()
        });
        for (k, v) in form.iter_mut() {
            if k == "CallStatus" {
                *v = call_status.into();
            }
        }
        if let Some(p) = &plan.parent_call_sid {
            form.push(("ParentCallSid".into(), p.clone()));
        }
        form
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
            ("Direction", &plan.direction),
            ("From", &plan.from),
            ("To", &plan.to),
            ("Timestamp", &rfc2822(SystemTime::now())),
            ("SequenceNumber", &seq.to_string()),
            ("CallbackSource", "call-progress-events"),
        ]);
        if let Some(p) = &plan.parent_call_sid {
            form.push(("ParentCallSid".into(), p.clone()));
        }
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

// ---------------------------------------------------------------------------
// TwiML after an update: the executor

/// What the executor does next.
enum Flow {
    /// Go on with the next verb.
    Next,
    /// The call is over (hung up, `<Hangup/>`, end of the TwiML, application error).
    End,
    /// A redirect arrived: drop everything, run the pending TwiML.
    Interrupted,
    /// Continue with another document (`<Redirect>`, `<Dial action>` response).
    Goto {
        twiml: String,
        url: Option<String>,
        source: TwimlSource,
    },
}

/// Why a `<Dial>` stopped before its legs ended by themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    HungUp,
    Interrupted,
}

/// The end of a `<Dial>`.
struct DialResult {
    status: String,
    call_sid: Option<String>,
    duration: Option<u64>,
    stop: Option<Stop>,
}

/// One answered call running TwiML.
struct Exec<'a> {
    plan: &'a CallPlan,
    /// What the callee does on a `<Connect><Stream>`.
    script: Vec<CallerStep>,
    hang: watch::Receiver<bool>,
    intr: watch::Receiver<u64>,
}

impl Exec<'_> {
    fn hung_up(&self) -> bool {
        *self.hang.borrow()
    }

    fn interrupted(&self) -> bool {
        self.intr.has_changed().unwrap_or(false)
    }

    /// Wait `ms` (forever when `None`) unless the call is hung up or redirected.
    async fn pause(&mut self, ms: Option<u64>) -> Flow {
        let sleep = async {
            match ms {
                Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                None => std::future::pending::<()>().await,
            }
        };
        // A clone, so that `interrupted()` still sees the redirect afterwards.
        let mut intr = self.intr.clone();
        tokio::select! {
            () = sleep => Flow::Next,
            _ = self.hang.wait_for(|v| *v) => Flow::End,
            r = intr.changed() => if r.is_ok() { Flow::Interrupted } else { Flow::End },
        }
    }

    /// Sleep one poll period, waking early on a hang-up or a redirect.
    async fn tick(&mut self) {
        let mut intr = self.intr.clone();
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(POLL_MS)) => {}
            _ = self.hang.wait_for(|v| *v) => {}
            _ = intr.changed() => {}
        }
    }
}

impl Inner {
    /// Run the pending redirects, one after the other, until the call ends.
    async fn run_updates(self: &Arc<Self>, x: &mut Exec<'_>) {
        loop {
            if x.hung_up() {
                return;
            }
            let Some((redirect, intr)) = self
                .with_call(&x.plan.sid, |s| {
                    s.pending.take().map(|r| (r, s.interrupt.subscribe()))
                })
                .flatten()
            else {
                return;
            };
            x.intr = intr;
            let (twiml, url) = match redirect {
                Redirect::Twiml(t) => (t, None),
                Redirect::Url { url, method } => {
                    match self
                        .fetch_twiml(x.plan, CallbackKind::Redirect, &url, &method, Vec::new())
                        .await
                    {
                        Some(body) => (body, Some(url)),
                        None => return,
                    }
                }
            };
            if x.interrupted() {
                continue;
            }
            match self.execute(x, twiml, url, TwimlSource::Update).await {
                Flow::Interrupted => continue,
                _ => return,
            }
        }
    }

    /// Record that the call executes a document; returns its index.
    fn record_twiml(
        &self,
        sid: &str,
        source: TwimlSource,
        url: Option<String>,
        twiml: &str,
    ) -> usize {
        self.with_call(sid, |s| {
            s.call.twiml_executed.push(ExecutedTwiml {
                source,
                url,
                twiml: twiml.to_string(),
                at: SystemTime::now(),
                verbs: Vec::new(),
                warnings: Vec::new(),
                error: None,
            });
            s.call.twiml_executed.len() - 1
        })
        .unwrap_or(usize::MAX)
    }

    fn with_record(&self, sid: &str, idx: usize, f: impl FnOnce(&mut ExecutedTwiml)) {
        self.with_call(sid, |s| {
            if let Some(r) = s.call.twiml_executed.get_mut(idx) {
                f(r);
            }
        });
    }

    /// Twilio's "application error": the error is recorded and the call ends.
    fn app_error(&self, sid: &str, code: u32, message: &str) {
        self.with_call(sid, |s| {
            s.call.error = Some(format!("Twilio error {code}: {message}"));
            s.call.error_code = Some(code);
        });
    }

    /// Fetch TwiML like the voice webhook (signed, the call's params plus `extra`).
    /// A failure is error 11200 and ends the call (`None`).
    async fn fetch_twiml(
        &self,
        plan: &CallPlan,
        kind: CallbackKind,
        url: &str,
        method: &str,
        extra: Vec<(String, String)>,
    ) -> Option<String> {
        let mut form = self.voice_params(plan, "in-progress");
        form.extend(extra);
        let sent = self.send(&plan.sid, kind, url, method, form).await;
        match sent.error {
            None => Some(sent.response_body),
            Some(e) => {
                self.app_error(
                    &plan.sid,
                    11200,
                    &format!("HTTP retrieval failure: {url}: {e}"),
                );
                None
            }
        }
    }

    /// Execute a document and those it leads to; returns `End` or `Interrupted`.
    async fn execute(
        self: &Arc<Self>,
        x: &mut Exec<'_>,
        mut twiml: String,
        mut url: Option<String>,
        mut source: TwimlSource,
    ) -> Flow {
        let sid = x.plan.sid.clone();
        loop {
            let idx = self.record_twiml(&sid, source, url.clone(), &twiml);
            let doc = match twiml_exec::parse(&twiml) {
                Ok(d) => d,
                Err(e) => {
                    self.with_record(&sid, idx, |r| r.error = Some(e.code));
                    self.app_error(&sid, e.code, &e.message);
                    return Flow::End;
                }
            };
            self.with_record(&sid, idx, |r| r.warnings = doc.warnings.clone());
            let mut goto = None;
            for verb in doc.verbs {
                if x.hung_up() {
                    return Flow::End;
                }
                if x.interrupted() {
                    return Flow::Interrupted;
                }
                self.with_record(&sid, idx, |r| r.verbs.push(verb.name().to_string()));
                match self.run_verb(x, verb, url.as_deref(), idx).await {
                    Flow::Next => {}
                    Flow::Goto { twiml, url, source } => {
                        goto = Some((twiml, url, source));
                        break;
                    }
                    other => return other,
                }
            }
            match goto {
                Some((t, u, s)) => (twiml, url, source) = (t, u, s),
                None => return Flow::End,
            }
        }
    }

    async fn run_verb(
        self: &Arc<Self>,
        x: &mut Exec<'_>,
        verb: Verb,
        base: Option<&str>,
        idx: usize,
    ) -> Flow {
        let sid = x.plan.sid.clone();
        match verb {
            Verb::Say { text, loops } => {
                let once = (text.chars().count() as u64).max(1) * self.cfg.say_ms_per_char;
                self.with_call(&sid, |s| s.call.said.push(text));
                let ms = (loops > 0).then(|| once.saturating_mul(u64::from(loops)));
                x.pause(ms).await
            }
            Verb::Pause { secs } => x.pause(Some(secs.saturating_mul(1000))).await,
            Verb::Hangup | Verb::Reject => Flow::End,
            Verb::Redirect { url, method } => {
                let Some(target) = twiml_exec::resolve_url(&url, base) else {
                    self.app_error(&sid, 11100, &format!("Invalid URL format: {url:?}"));
                    return Flow::End;
                };
                match self
                    .fetch_twiml(x.plan, CallbackKind::Redirect, &target, &method, Vec::new())
                    .await
                {
                    Some(twiml) => Flow::Goto {
                        twiml,
                        url: Some(target),
                        source: TwimlSource::Redirect,
                    },
                    None => Flow::End,
                }
            }
            Verb::ConnectStream { url, params } => self.stream(x, &url, &params, base).await,
            Verb::Dial(d) => self.run_dial(x, d, base, idx).await,
            Verb::Other { name } => {
                self.with_record(&sid, idx, |r| {
                    r.warnings
                        .push(format!("<{name}> is not emulated; skipped"));
                });
                Flow::Next
            }
        }
    }

    /// `<Connect><Stream>` from an update: a new media session with the callee's script.
    async fn stream(
        self: &Arc<Self>,
        x: &mut Exec<'_>,
        url: &str,
        params: &[(String, String)],
        base: Option<&str>,
    ) -> Flow {
        use twiml_exec::escape;
        let mut doc = format!("<Response><Connect><Stream url=\"{}\">", escape(url));
        for (k, v) in params {
            doc.push_str(&format!(
                "<Parameter name=\"{}\" value=\"{}\"/>",
                escape(k),
                escape(v)
            ));
        }
        doc.push_str("</Stream></Connect></Response>");
        let from = base
            .map(str::to_string)
            .or_else(|| self.cfg.webhook_base.clone())
            .or_else(|| x.plan.url.clone());
        let connect_base = self.connect_base(
            from.as_deref()
                .map(|f| {
                    // The host is reached where the document's URL is reached.
                    self.reachable(f)
                        .map(|u| u.to_string())
                        .unwrap_or_else(|_| f.to_string())
                })
                .as_deref(),
        );
        let stop = self.stream_stop(&x.hang, &x.intr);
        let ccfg = CallerConfig {
            voice_url: String::new(),
            public_url: String::new(),
            auth_token: Some(self.cfg.auth_token.clone()),
            connect_base,
            account_sid: self.cfg.account_sid.clone(),
            call_sid: x.plan.sid.clone(),
            from: x.plan.from.clone(),
            to: x.plan.to.clone(),
            direction: x.plan.direction.clone(),
            script: x.script.clone(),
            twiml: Some(doc),
            hangup: Some(stop),
            ..CallerConfig::default()
        };
        let result = caller::run_call_with(ccfg, self.cfg.run_options.clone()).await;
        let end = self
            .with_call(&x.plan.sid, |s| match result {
                Ok(r) => {
                    let end = r.end.clone();
                    s.call.stream_reports.push(r.clone());
                    if s.call.report.is_none() {
                        s.call.report = Some(r);
                    }
                    Some(end)
                }
                Err(e) => {
                    s.call.error = Some(e.to_string());
                    None
                }
            })
            .flatten();
        if x.hung_up() {
            return Flow::End;
        }
        if x.interrupted() {
            return Flow::Interrupted;
        }
        match end {
            // The callee hung up.
            Some(CallEnd::Hangup | CallEnd::Timeout) => Flow::End,
            // The application closed the stream (or it failed): on to the next verb.
            _ => Flow::Next,
        }
    }

    /// A hang-up signal for one media session: set when the call is hung up or redirected.
    fn stream_stop(
        self: &Arc<Self>,
        hang: &watch::Receiver<bool>,
        intr: &watch::Receiver<u64>,
    ) -> watch::Receiver<bool> {
        let (tx, rx) = watch::channel(false);
        let mut hang = hang.clone();
        let mut intr = intr.clone();
        self.spawn(async move {
            tokio::select! {
                r = hang.wait_for(|v| *v) => if r.is_ok() { tx.send_replace(true); },
                r = intr.changed() => if r.is_ok() { tx.send_replace(true); },
                () = tx.closed() => {}
            }
        });
        rx
    }

    fn dial_outcome(&self, to: &str) -> DialOutcome {
        self.lock()
            .dial_outcomes
            .iter()
            .find(|(n, _)| n == to)
            .map_or_else(|| self.cfg.default_dial_outcome.clone(), |(_, o)| o.clone())
    }

    async fn run_dial(
        self: &Arc<Self>,
        x: &mut Exec<'_>,
        d: Dial,
        base: Option<&str>,
        idx: usize,
    ) -> Flow {
        let sid = x.plan.sid.clone();
        let result = match d.targets.first() {
            None => {
                self.with_record(&sid, idx, |r| {
                    r.warnings
                        .push("<Dial> without a number, SIP URI or conference".into());
                });
                return Flow::Next;
            }
            Some(DialTarget::Conference(c)) => self.dial_conference(x, &d, c).await,
            Some(_) => self.dial_legs(x, &d, base).await,
        };
        if result.stop == Some(Stop::Interrupted) {
            return Flow::Interrupted;
        }
        let hung = result.stop == Some(Stop::HungUp);
        let Some(action) = &d.action else {
            return if hung { Flow::End } else { Flow::Next };
        };
        let Some(url) = twiml_exec::resolve_url(action, base) else {
            if !hung {
                self.app_error(&sid, 11100, &format!("Invalid URL format: {action:?}"));
            }
            return Flow::End;
        };
        let mut form = self.voice_params(x.plan, if hung { "completed" } else { "in-progress" });
        form.push(("DialCallStatus".into(), result.status.clone()));
        if let Some(child) = &result.call_sid {
            form.push(("DialCallSid".into(), child.clone()));
        }
        if let Some(secs) = result.duration {
            form.push(("DialCallDuration".into(), secs.to_string()));
        }
        let sent = self
            .send(&sid, CallbackKind::DialAction, &url, &d.method, form)
            .await;
        if hung {
            // The call is over: the request is made, its TwiML is not executed.
            return Flow::End;
        }
        match sent.error {
            None => Flow::Goto {
                twiml: sent.response_body,
                url: Some(url),
                source: TwimlSource::DialAction,
            },
            Some(e) => {
                self.app_error(&sid, 11200, &format!("HTTP retrieval failure: {url}: {e}"));
                Flow::End
            }
        }
    }

    /// `<Dial>` to numbers / SIP URIs: child calls, first to answer is bridged.
    async fn dial_legs(
        self: &Arc<Self>,
        x: &mut Exec<'_>,
        d: &Dial,
        base: Option<&str>,
    ) -> DialResult {
        let parent = x.plan;
        let caller_id = d.caller_id.clone().unwrap_or_else(|| parent.from.clone());
        let mut kids: Vec<String> = Vec::new();
        for t in &d.targets {
            let (ep, kind) = match t {
                DialTarget::Number(e) => (e, DialKind::Number),
                DialTarget::Sip(e) => (e, DialKind::Sip),
                DialTarget::Conference(_) => continue,
            };
            let child = random_sid("CA");
            let mut params = pairs(&[
                ("To", &ep.to),
                ("From", &caller_id),
                ("Timeout", &d.timeout_secs.to_string()),
            ]);
            if let Some(cb) = ep
                .status_callback
                .as_deref()
                .and_then(|u| twiml_exec::resolve_url(u, base))
            {
                params.push(("StatusCallback".into(), cb));
                params.push((
                    "StatusCallbackMethod".into(),
                    ep.status_callback_method.clone(),
                ));
                for ev in &ep.status_callback_events {
                    params.push(("StatusCallbackEvent".into(), ev.clone()));
                }
            }
            if let Some(limit) = d.time_limit_secs {
                params.push(("TimeLimit".into(), limit.to_string()));
            }
            let outcome = if kind == DialKind::Number && !is_e164(&ep.to) {
                DialOutcome::Fail
            } else {
                self.dial_outcome(&ep.to)
            };
            let call = EmulatedCall::new(
                child.clone(),
                &ep.to,
                &caller_id,
                params,
                "outbound-dial",
                Some(parent.sid.clone()),
            );
            let leg = DialedLeg {
                to: ep.to.clone(),
                kind,
                status: "queued".into(),
                sid: child.clone(),
                caller_id: caller_id.clone(),
                timeout_secs: d.timeout_secs,
                action: d.action.clone(),
                dial_call_status: None,
                started_at: SystemTime::now(),
                answered_at: None,
                ended_at: None,
                duration: None,
            };
            {
                let mut st = self.lock();
                st.calls.push(Slot::new(call));
                if let Some(p) = st.slot(&parent.sid) {
                    p.call.dialed.push(leg);
                }
            }
            self.spawn(human_leg(self.clone(), child.clone(), outcome, None));
            kids.push(child);
        }

        let mut winner: Option<String> = None;
        let mut stop = None;
        loop {
            if x.hung_up() {
                stop = Some(Stop::HungUp);
                break;
            }
            if x.interrupted() {
                stop = Some(Stop::Interrupted);
                break;
            }
            let (answered, all_final) = {
                let st = self.lock();
                let calls: Vec<&EmulatedCall> =
                    kids.iter().filter_map(|k| st.call_ref(k)).collect();
                (
                    calls
                        .iter()
                        .find(|c| c.answer_time.is_some())
                        .map(|c| c.sid.clone()),
                    calls
                        .iter()
                        .all(|c| FINAL_STATUSES.contains(&c.status.as_str())),
                )
            };
            if winner.is_none()
                && let Some(w) = answered
            {
                // First to answer is connected; the others are hung up.
                for k in kids.iter().filter(|k| **k != w) {
                    self.hang_up(k);
                }
                winner = Some(w);
            }
            if all_final {
                break;
            }
            x.tick().await;
        }
        if stop.is_some() {
            for k in &kids {
                self.hang_up(k);
            }
        }
        // Let the legs send their last callbacks before the parent goes on.
        let deadline = Instant::now() + LEGS_DONE_TIMEOUT;
        while Instant::now() < deadline {
            let done = {
                let st = self.lock();
                kids.iter().all(|k| st.call_ref(k).is_none_or(|c| c.done))
            };
            if done {
                break;
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
        let (status, call_sid, duration) = {
            let st = self.lock();
            let pick = winner.as_ref().or(kids.first());
            match pick.and_then(|k| st.call_ref(k)) {
                Some(c) if winner.is_some() => {
                    ("completed".to_string(), Some(c.sid.clone()), c.duration)
                }
                Some(c) => (c.status.clone(), Some(c.sid.clone()), c.duration),
                None => ("failed".to_string(), None, None),
            }
        };
        let dial_status = status.clone();
        self.with_call(&parent.sid, |s| {
            for leg in s.call.dialed.iter_mut().filter(|l| kids.contains(&l.sid)) {
                leg.dial_call_status = Some(dial_status.clone());
            }
        });
        DialResult {
            status,
            call_sid,
            duration: duration.or(Some(0)),
            stop,
        }
    }

    /// `<Dial><Conference>`: the call is in the conference until it leaves or is removed.
    async fn dial_conference(
        self: &Arc<Self>,
        x: &mut Exec<'_>,
        d: &Dial,
        c: &ConferenceTarget,
    ) -> DialResult {
        let sid = x.plan.sid.clone();
        let now = SystemTime::now();
        let conf_sid = {
            let mut st = self.lock();
            let i = st.conference_for(&c.name);
            st.conferences[i].participants.push(Participant {
                call_sid: sid.clone(),
                label: c.label.clone(),
                status: "connecting".into(),
                hold: false,
                muted: c.muted,
                coaching: false,
                start_conference_on_enter: c.start_conference_on_enter,
                end_conference_on_exit: c.end_conference_on_exit,
                beep: c.beep.clone(),
                early_media: true,
                via_api: false,
                kicked: false,
                date_created: now,
                date_updated: now,
                joined_at: None,
                left_at: None,
            });
            let conf_sid = st.conferences[i].sid.clone();
            st.join(&conf_sid, &sid);
            if let Some(p) = st.slot(&sid) {
                p.call.dialed.push(DialedLeg {
                    to: c.name.clone(),
                    kind: DialKind::Conference,
                    status: "in-progress".into(),
                    sid: conf_sid.clone(),
                    caller_id: d.caller_id.clone().unwrap_or_else(|| x.plan.from.clone()),
                    timeout_secs: d.timeout_secs,
                    action: d.action.clone(),
                    dial_call_status: None,
                    started_at: now,
                    answered_at: Some(now),
                    ended_at: None,
                    duration: None,
                });
            }
            conf_sid
        };
        let mut stop = None;
        loop {
            if x.hung_up() {
                stop = Some(Stop::HungUp);
                break;
            }
            if x.interrupted() {
                stop = Some(Stop::Interrupted);
                break;
            }
            let still_in = self
                .lock()
                .conferences
                .iter()
                .find(|c| c.sid == conf_sid)
                .and_then(|c| c.participant(&sid))
                .is_some_and(Participant::active);
            if !still_in {
                break;
            }
            x.tick().await;
        }
        self.lock().leave(&conf_sid, &sid, false);
        let ended = SystemTime::now();
        self.with_call(&sid, |s| {
            if let Some(leg) = s.call.dialed.iter_mut().rev().find(|l| l.sid == conf_sid) {
                leg.status = "completed".into();
                leg.ended_at = Some(ended);
                leg.duration = leg
                    .answered_at
                    .and_then(|a| ended.duration_since(a).ok())
                    .map(|d| d.as_millis().div_ceil(1000) as u64);
                leg.dial_call_status = Some("answered".into());
            }
        });
        DialResult {
            status: "answered".into(),
            call_sid: None,
            duration: None,
            stop,
        }
    }
}

/// The emulated person reached by a `<Dial>` leg or a participant call
/// (`conference`: the conference SID it joins once answered).
async fn human_leg(em: Arc<Inner>, sid: String, outcome: DialOutcome, conference: Option<String>) {
    let Some((plan, mut hang)) =
        em.with_call(&sid, |s| (CallPlan::new(&s.call), s.hangup.subscribe()))
    else {
        return;
    };
    let ring = match outcome {
        DialOutcome::Answer { .. } => Ring::Answer,
        DialOutcome::Busy => Ring::Busy,
        DialOutcome::NoAnswer => Ring::NoAnswer,
        DialOutcome::Fail => Ring::Fail,
    };
    if em.ring(&plan, ring, plan.timeout_ms, &mut hang).await {
        em.status_callback(&plan, "answered", "in-progress", Vec::new())
            .await;
        if let Some(conf) = &conference {
            em.lock().join(conf, &sid);
        }
        let mut stay = match outcome {
            DialOutcome::Answer { stay_ms } => stay_ms,
            _ => 0,
        };
        if let Some(limit) = plan.time_limit {
            stay = stay.min(limit.as_millis() as u64);
        }
        let deadline = Instant::now().checked_add(Duration::from_millis(stay));
        loop {
            if *hang.borrow() || deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if let Some(conf) = &conference {
                let in_conf = em
                    .lock()
                    .conferences
                    .iter()
                    .find(|c| c.sid == *conf)
                    .and_then(|c| c.participant(&sid))
                    .is_some_and(Participant::active);
                if !in_conf {
                    break;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(POLL_MS)) => {}
                _ = hang.wait_for(|v| *v) => {}
            }
        }
        em.end(&sid, "completed");
        if let Some(conf) = &conference {
            em.lock().leave(conf, &sid, false);
        }
    }
    em.finish(&plan).await;
    // Never answered (busy, no-answer, failed, canceled): the participant failed.
    let mut st = em.lock();
    let status = st.call_ref(&sid).map(|c| c.status.clone());
    if let Some(status) = status {
        st.participant_progress(&sid, &status);
    }
}

// ---------------------------------------------------------------------------
// Conferences

impl EmState {
    fn conference_mut(&mut self, sid: &str) -> Option<&mut Conference> {
        self.conferences.iter_mut().find(|c| c.sid == sid)
    }

    /// The index of the live conference named `name`, created (`init`) if there is none.
    fn conference_for(&mut self, name: &str) -> usize {
        if let Some(i) = self
            .conferences
            .iter()
            .position(|c| c.friendly_name == name && c.status != "completed")
        {
            return i;
        }
        let now = SystemTime::now();
        self.conferences.push(Conference {
            sid: random_sid("CF"),
            friendly_name: name.to_string(),
            status: "init".into(),
            date_created: now,
            date_updated: now,
            started_at: None,
            ended_at: None,
            reason_conference_ended: None,
            call_sid_ending_conference: None,
            participants: Vec::new(),
        });
        self.conferences.len() - 1
    }

    /// The participant `call_sid` (already listed) is now in the conference.
    fn join(&mut self, conf_sid: &str, call_sid: &str) {
        let Some(c) = self.conference_mut(conf_sid) else {
            return;
        };
        if c.status == "completed" {
            return;
        }
        let now = SystemTime::now();
        if let Some(p) = c
            .participants
            .iter_mut()
            .rev()
            .find(|p| p.call_sid == call_sid && p.active())
        {
            p.status = "connected".into();
            p.joined_at = Some(now);
            p.date_updated = now;
        }
        c.date_updated = now;
        let connected: Vec<&Participant> = c
            .participants
            .iter()
            .filter(|p| p.status == "connected")
            .collect();
        if c.status == "init"
            && connected.len() >= 2
            && connected.iter().any(|p| p.start_conference_on_enter)
        {
            c.status = "in-progress".into();
            c.started_at = Some(now);
        }
    }

    /// The participant `call_sid` leaves (hung up, redirected, or `kicked`); may end
    /// the conference. No-op if it already left.
    fn leave(&mut self, conf_sid: &str, call_sid: &str, kicked: bool) {
        let Some(i) = self.conferences.iter().position(|c| c.sid == conf_sid) else {
            return;
        };
        let now = SystemTime::now();
        let c = &mut self.conferences[i];
        let Some(p) = c
            .participants
            .iter_mut()
            .rev()
            .find(|p| p.call_sid == call_sid && p.active())
        else {
            return;
        };
        let joined = p.joined_at.is_some();
        p.status = if joined { "complete" } else { "failed" }.into();
        p.left_at = Some(now);
        p.date_updated = now;
        p.kicked = kicked;
        let end_on_exit = joined && p.end_conference_on_exit;
        c.date_updated = now;
        if c.status == "completed" {
            return;
        }
        let how = if kicked { "kicked" } else { "left" };
        if end_on_exit {
            self.end_conference(
                i,
                &format!("participant-with-end-conference-on-exit-{how}"),
                Some(call_sid),
            );
        } else if !c.participants.iter().any(Participant::active) {
            self.end_conference(i, &format!("last-participant-{how}"), Some(call_sid));
        }
    }

    /// The conference ends: everyone still in it (or still being called) leaves.
    fn end_conference(&mut self, i: usize, reason: &str, ending: Option<&str>) {
        let now = SystemTime::now();
        let c = &mut self.conferences[i];
        if c.status == "completed" {
            return;
        }
        c.status = "completed".into();
        c.ended_at = Some(now);
        c.date_updated = now;
        c.reason_conference_ended = Some(reason.to_string());
        c.call_sid_ending_conference = ending.map(str::to_string);
        let mut hang = Vec::new();
        for p in c.participants.iter_mut().filter(|p| p.active()) {
            p.status = if p.joined_at.is_some() {
                "complete"
            } else {
                "failed"
            }
            .into();
            p.left_at = Some(now);
            p.date_updated = now;
            if p.via_api {
                hang.push(p.call_sid.clone());
            }
        }
        // Participant calls have nothing left to do; `<Dial>` participants go on
        // with their TwiML.
        for sid in hang {
            if let Some(s) = self.slot(&sid) {
                s.hangup.send_replace(true);
            }
        }
    }

    /// A participant call's status changed before it joined.
    fn participant_progress(&mut self, call_sid: &str, call_status: &str) {
        let mut failed = None;
        for (i, c) in self.conferences.iter_mut().enumerate() {
            let Some(p) = c.participants.iter_mut().rev().find(|p| {
                p.via_api && p.call_sid == call_sid && p.joined_at.is_none() && p.active()
            }) else {
                continue;
            };
            let status = match call_status {
                "initiated" => "connecting",
                "ringing" => "ringing",
                s if FINAL_STATUSES.contains(&s) => "failed",
                _ => continue,
            };
            p.status = status.into();
            p.date_updated = SystemTime::now();
            if status == "failed" {
                p.left_at = Some(SystemTime::now());
                failed = Some(i);
            }
        }
        if let Some(i) = failed
            && self.conferences[i].status != "completed"
            && !self.conferences[i]
                .participants
                .iter()
                .any(Participant::active)
        {
            self.end_conference(i, "last-participant-left", Some(call_sid));
        }
    }
}

impl Inner {
    /// `…/Conferences…` requests.
    fn conference_route(
        self: &Arc<Self>,
        method: &Method,
        path: &str,
        query: &str,
        tail: &str,
        form: &[(String, String)],
    ) -> Reply {
        let Some(rest) = tail.strip_suffix(".json") else {
            return not_found(path);
        };
        let parts: Vec<String> = rest.split('/').map(percent_decode).collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let not_allowed = || twilio_error(405, 20004, "Method not allowed");
        match parts.as_slice() {
            ["Conferences"] => match *method {
                Method::GET => self.list_conferences(path, query),
                _ => not_allowed(),
            },
            ["Conferences", conf] => match *method {
                Method::GET => match self.lock().conferences.iter().find(|c| c.sid == *conf) {
                    Some(c) => reply(200, self.conference_resource(c)),
                    None => not_found(path),
                },
                Method::POST => self.update_conference(path, conf, form),
                _ => not_allowed(),
            },
            ["Conferences", conf, "Participants"] => match *method {
                Method::GET => self.list_participants(path, query, conf),
                Method::POST => self.create_participant(path, conf, form),
                _ => not_allowed(),
            },
            ["Conferences", conf, "Participants", who] => match *method {
                Method::GET | Method::POST | Method::DELETE => {
                    self.participant_request(method, path, conf, who, form)
                }
                _ => not_allowed(),
            },
            _ => not_found(path),
        }
    }

    fn update_conference(&self, path: &str, conf: &str, form: &[(String, String)]) -> Reply {
        let status = first(form, "Status");
        if let Some(s) = status
            && s != "completed"
        {
            return twilio_error(400, 20001, format!("Status must be completed: {s}"));
        }
        let mut st = self.lock();
        let Some(i) = st.conferences.iter().position(|c| c.sid == conf) else {
            return not_found(path);
        };
        if status.is_some() {
            st.end_conference(i, "conference-ended-via-api", None);
        }
        reply(200, self.conference_resource(&st.conferences[i]))
    }

    fn list_conferences(&self, path: &str, query: &str) -> Reply {
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let mut name = None;
        let mut status = None;
        let mut created = Vec::new();
        let mut updated = Vec::new();
        let mut filters = Vec::new();
        let mut paging = (DEFAULT_PAGE_SIZE, 0usize);
        for (k, v) in &params {
            let time = |cmp: Cmp| -> Result<TimeFilter, Reply> {
                let (at_ms, day) = parse_date(v).ok_or_else(|| {
                    twilio_error(400, 20001, format!("Invalid value for {k}: {v}"))
                })?;
                Ok(TimeFilter {
                    on_start: true,
                    cmp,
                    at_ms,
                    day,
                })
            };
            let r = match k.as_str() {
                "PageSize" | "Page" | "PageToken" => match parse_paging(k, v, &mut paging) {
                    Ok(()) => continue,
                    Err(m) => return twilio_error(400, 20001, m),
                },
                "FriendlyName" => {
                    name = Some(v.clone());
                    Ok(())
                }
                "Status" => {
                    if !["init", "in-progress", "completed"].contains(&v.as_str()) {
                        return twilio_error(400, 20001, format!("Invalid value for Status: {v}"));
                    }
                    status = Some(v.clone());
                    Ok(())
                }
                "DateCreated" => time(Cmp::On).map(|t| created.push(t)),
                "DateCreated<" => time(Cmp::OnOrBefore).map(|t| created.push(t)),
                "DateCreated>" => time(Cmp::OnOrAfter).map(|t| created.push(t)),
                "DateUpdated" => time(Cmp::On).map(|t| updated.push(t)),
                "DateUpdated<" => time(Cmp::OnOrBefore).map(|t| updated.push(t)),
                "DateUpdated>" => time(Cmp::OnOrAfter).map(|t| updated.push(t)),
                _ => continue,
            };
            if let Err(e) = r {
                return e;
            }
            filters.push((k.clone(), v.clone()));
        }
        let st = self.lock();
        let items: Vec<Value> = st
            .conferences
            .iter()
            .rev()
            .filter(|c| name.as_ref().is_none_or(|n| *n == c.friendly_name))
            .filter(|c| status.as_ref().is_none_or(|s| *s == c.status))
            .filter(|c| created.iter().all(|t| t.matches(Some(c.date_created))))
            .filter(|c| updated.iter().all(|t| t.matches(Some(c.date_updated))))
            .map(|c| self.conference_resource(c))
            .collect();
        page_reply("conferences", path, query, &filters, paging, items)
    }

    fn list_participants(&self, path: &str, query: &str, conf: &str) -> Reply {
        let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let mut filters = Vec::new();
        let mut want: Vec<(&str, bool)> = Vec::new();
        let mut paging = (DEFAULT_PAGE_SIZE, 0usize);
        for (k, v) in &params {
            match k.as_str() {
                "PageSize" | "Page" | "PageToken" => {
                    if let Err(m) = parse_paging(k, v, &mut paging) {
                        return twilio_error(400, 20001, m);
                    }
                    continue;
                }
                "Muted" | "Hold" | "Coaching" => {
                    let b = match v.as_str() {
                        "true" => true,
                        "false" => false,
                        _ => {
                            return twilio_error(400, 20001, format!("Invalid value for {k}: {v}"));
                        }
                    };
                    want.push((
                        match k.as_str() {
                            "Muted" => "muted",
                            "Hold" => "hold",
                            _ => "coaching",
                        },
                        b,
                    ));
                }
                _ => continue,
            }
            filters.push((k.clone(), v.clone()));
        }
        let st = self.lock();
        let Some(c) = st.conferences.iter().find(|c| c.sid == conf) else {
            return not_found(path);
        };
        let items: Vec<Value> = c
            .participants
            .iter()
            .filter(|p| p.active())
            .filter(|p| {
                want.iter().all(|(f, b)| match *f {
                    "muted" => p.muted == *b,
                    "hold" => p.hold == *b,
                    _ => p.coaching == *b,
                })
            })
            .map(|p| self.participant_resource(c, p))
            .collect();
        page_reply("participants", path, query, &filters, paging, items)
    }

    fn create_participant(
        self: &Arc<Self>,
        path: &str,
        conf: &str,
        form: &[(String, String)],
    ) -> Reply {
        let to = first(form, "To").unwrap_or_default().trim();
        let reachable = is_e164(to) || to.starts_with("sip:") || to.starts_with("client:");
        if !reachable {
            return twilio_error(400, 21211, format!("Invalid 'To' Phone Number: {to}"));
        }
        let from = match first(form, "From").or(first(form, "CallerId")) {
            None | Some("") => {
                return twilio_error(400, 21212, "A 'From' phone number is required.");
            }
            Some(f) if is_e164(to) && !is_e164(f) => {
                return twilio_error(400, 21212, format!("Invalid From Number (caller ID): {f}"));
            }
            Some(f) => f,
        };
        if let Some(u) = first(form, "StatusCallback")
            && !is_http_url(u)
        {
            return twilio_error(
                400,
                21205,
                format!("StatusCallback is not a valid URL: {u}"),
            );
        }
        let flag = |k: &str, default: bool| -> Result<bool, Reply> {
            match first(form, k) {
                None => Ok(default),
                Some(v) if v.eq_ignore_ascii_case("true") => Ok(true),
                Some(v) if v.eq_ignore_ascii_case("false") => Ok(false),
                Some(v) => Err(twilio_error(
                    400,
                    20001,
                    format!("Invalid value for {k}: {v}"),
                )),
            }
        };
        let (start, end, muted, early, coaching) = match (
            flag("StartConferenceOnEnter", true),
            flag("EndConferenceOnExit", false),
            flag("Muted", false),
            flag("EarlyMedia", true),
            flag("Coaching", false),
        ) {
            (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) => (a, b, c, d, e),
            (Err(r), ..)
            | (_, Err(r), ..)
            | (_, _, Err(r), ..)
            | (.., Err(r), _)
            | (.., Err(r)) => {
                return r;
            }
        };
        let outcome = self.dial_outcome(to);
        let mut st = self.lock();
        let i = if conf.starts_with("CF") && conf.len() == 34 {
            match st.conferences.iter().position(|c| c.sid == conf) {
                None => return not_found(path),
                Some(i) if st.conferences[i].status == "completed" => {
                    return twilio_error(
                        400,
                        20001,
                        format!("Conference {conf} is completed: no participant can be added"),
                    );
                }
                Some(i) => i,
            }
        } else {
            // A friendly name: the conference is created if it does not exist.
            st.conference_for(conf)
        };
        let label = first(form, "Label").filter(|l| !l.is_empty());
        if let Some(l) = label
            && st.conferences[i]
                .participants
                .iter()
                .any(|p| p.active() && p.label.as_deref() == Some(l))
        {
            return twilio_error(
                400,
                20001,
                format!("Label {l} is already in use in this conference"),
            );
        }
        let now = SystemTime::now();
        let call_sid = random_sid("CA");
        let participant = Participant {
            call_sid: call_sid.clone(),
            label: label.map(str::to_string),
            status: "queued".into(),
            hold: false,
            muted,
            coaching,
            start_conference_on_enter: start,
            end_conference_on_exit: end,
            beep: first(form, "Beep").unwrap_or("true").to_string(),
            early_media: early,
            via_api: true,
            kicked: false,
            date_created: now,
            date_updated: now,
            joined_at: None,
            left_at: None,
        };
        st.conferences[i].participants.push(participant.clone());
        st.conferences[i].date_updated = now;
        let conf_sid = st.conferences[i].sid.clone();
        let call = EmulatedCall::new(
            call_sid.clone(),
            to,
            from,
            form.to_vec(),
            "outbound-api",
            None,
        );
        st.calls.push(Slot::new(call));
        let mut body = self.participant_resource(&st.conferences[i], &participant);
        body["queue_time"] = json!("0");
        drop(st);
        self.spawn(human_leg(self.clone(), call_sid, outcome, Some(conf_sid)));
        reply(201, body)
    }

    fn participant_request(
        &self,
        method: &Method,
        path: &str,
        conf: &str,
        who: &str,
        form: &[(String, String)],
    ) -> Reply {
        let mut st = self.lock();
        let Some(ci) = st.conferences.iter().position(|c| c.sid == conf) else {
            return not_found(path);
        };
        let Some(pi) = st.conferences[ci]
            .participants
            .iter()
            .rposition(|p| p.active() && (p.call_sid == who || p.label.as_deref() == Some(who)))
        else {
            return not_found(path);
        };
        let call_sid = st.conferences[ci].participants[pi].call_sid.clone();
        match *method {
            Method::GET => {
                let c = &st.conferences[ci];
                reply(200, self.participant_resource(c, &c.participants[pi]))
            }
            Method::DELETE => {
                let via_api = st.conferences[ci].participants[pi].via_api;
                st.leave(conf, &call_sid, true);
                if via_api && let Some(s) = st.slot(&call_sid) {
                    s.hangup.send_replace(true);
                }
                reply(204, Value::Null)
            }
            _ => {
                let mut flags = Vec::new();
                for k in ["Hold", "Muted", "EndConferenceOnExit", "Coaching"] {
                    if let Some(v) = first(form, k) {
                        let b = match v {
                            "true" => true,
                            "false" => false,
                            // Twilio: anything else than `true` is `false` for Muted.
                            _ if k == "Muted" => false,
                            _ => {
                                return twilio_error(
                                    400,
                                    20001,
                                    format!("Invalid value for {k}: {v}"),
                                );
                            }
                        };
                        flags.push((k, b));
                    }
                }
                let now = SystemTime::now();
                let c = &mut st.conferences[ci];
                let p = &mut c.participants[pi];
                for (k, b) in flags {
                    match k {
                        "Hold" => p.hold = b,
                        "Muted" => p.muted = b,
                        "EndConferenceOnExit" => p.end_conference_on_exit = b,
                        _ => p.coaching = b,
                    }
                }
                p.date_updated = now;
                let c = &st.conferences[ci];
                reply(200, self.participant_resource(c, &c.participants[pi]))
            }
        }
    }

    /// Twilio's conference resource.
    fn conference_resource(&self, c: &Conference) -> Value {
        let acct = &self.cfg.account_sid;
        let base = format!("/{API_VERSION}/Accounts/{acct}/Conferences/{}", c.sid);
        json!({
            "account_sid": acct,
            "api_version": API_VERSION,
            "call_sid_ending_conference": c.call_sid_ending_conference,
            "date_created": rfc2822(c.date_created),
            "date_updated": rfc2822(c.date_updated),
            "friendly_name": c.friendly_name,
            "reason_conference_ended": c.reason_conference_ended,
            "region": "us1",
            "sid": c.sid,
            "status": c.status,
            "subresource_uris": {
                "participants": format!("{base}/Participants.json"),
                "recordings": format!("{base}/Recordings.json"),
            },
            "uri": format!("{base}.json"),
        })
    }

    /// Twilio's participant resource.
    fn participant_resource(&self, c: &Conference, p: &Participant) -> Value {
        let acct = &self.cfg.account_sid;
        json!({
            "account_sid": acct,
            "call_sid": p.call_sid,
            "call_sid_to_coach": null,
            "coaching": p.coaching,
            "conference_sid": c.sid,
            "date_created": rfc2822(p.date_created),
            "date_updated": rfc2822(p.date_updated),
            "end_conference_on_exit": p.end_conference_on_exit,
            "hold": p.hold,
            "label": p.label,
            "muted": p.muted,
            "start_conference_on_enter": p.start_conference_on_enter,
            "status": p.status,
            "uri": format!(
                "/{API_VERSION}/Accounts/{acct}/Conferences/{}/Participants/{}.json",
                c.sid, p.call_sid
            ),
        })
    }
}

/// `PageSize` / `Page` of a simple list (page tokens are accepted and ignored).
fn parse_paging(k: &str, v: &str, paging: &mut (usize, usize)) -> Result<(), String> {
    match k {
        "PageSize" => {
            paging.0 = v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| format!("PageSize must be between 1 and {MAX_PAGE_SIZE}: {v}"))?;
        }
        "Page" => {
            paging.1 = v
                .parse()
                .map_err(|_| format!("Page must be a non-negative integer: {v}"))?;
        }
        _ => {}
    }
    Ok(())
}

/// One page of `items` under `key`, with Twilio's paging fields.
fn page_reply(
    key: &str,
    path: &str,
    query: &str,
    filters: &[(String, String)],
    (page_size, page): (usize, usize),
    items: Vec<Value>,
) -> Reply {
    let total = items.len();
    let start = page.saturating_mul(page_size);
    let page_items: Vec<Value> = items.into_iter().skip(start).take(page_size).collect();
    let page_uri = |page: usize| {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        ser.extend_pairs(filters.iter());
        ser.append_pair("PageSize", &page_size.to_string());
        ser.append_pair("Page", &page.to_string());
        format!("{path}?{}", ser.finish())
    };
    let next = (start + page_size < total).then(|| page_uri(page + 1));
    let previous = (page > 0).then(|| page_uri(page - 1));
    let uri = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let mut body = json!({
        "end": (start + page_items.len()).saturating_sub(1).max(start),
        "first_page_uri": page_uri(0),
        "next_page_uri": next,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": previous,
        "start": start,
        "uri": uri,
    });
    body[key] = Value::Array(page_items);
    reply(200, body)
}

/// Decode `%XX` escapes of a path segment (invalid escapes are kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
    parent: Option<String>,
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
            parent: None,
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
                "ParentCallSid" => q.parent = Some(v.clone()),
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
            && self
                .parent
                .as_ref()
                .is_none_or(|p| c.parent_call_sid.as_ref() == Some(p))
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
        let sid = random_sid("CA");
        let mut call = EmulatedCall::new(sid.clone(), to, FROM, Vec::new(), "outbound-api", None);
        call.done = true;
        em.inner.lock().calls.push(Slot::new(call));
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

    // -- call updates, <Dial> and conferences ------------------------------------------

    use std::collections::HashMap;
    use voxbridge_twilio::signature::validate_signature;

    /// A request the test app received.
    #[derive(Clone, Debug)]
    struct AppHit {
        path: String,
        signature: String,
        form: Vec<(String, String)>,
        at: Instant,
    }

    impl AppHit {
        fn param(&self, k: &str) -> Option<&str> {
            first(&self.form, k)
        }
    }

    #[derive(Default)]
    struct AppLog {
        hits: Vec<AppHit>,
        /// Per media session: the events received, and whether it closed.
        ws: Vec<(Vec<String>, bool)>,
    }

    /// A voxbridge stand-in: `/voice` answers `<Connect><Stream>` to its `/media`,
    /// which records the Media Streams events; any other path is recorded and
    /// answered with the TwiML set for it in `twiml` (else 204).
    #[derive(Clone)]
    struct TestApp {
        port: u16,
        log: Arc<Mutex<AppLog>>,
        twiml: Arc<Mutex<HashMap<String, String>>>,
    }

    impl TestApp {
        async fn start() -> TestApp {
            use axum::extract::ws::{Message, WebSocketUpgrade};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let app = TestApp {
                port,
                log: Arc::default(),
                twiml: Arc::default(),
            };
            app.set(
                "/voice",
                &format!(
                    "<Response><Connect><Stream url=\"wss://127.0.0.1:{port}/media\"/></Connect></Response>"
                ),
            );
            let media = {
                let app = app.clone();
                move |ws: WebSocketUpgrade| {
                    let app = app.clone();
                    async move {
                        ws.on_upgrade(move |mut socket| async move {
                            let idx = {
                                let mut log = lock_or_poisoned(&app.log);
                                log.ws.push((Vec::new(), false));
                                log.ws.len() - 1
                            };
                            while let Some(Ok(m)) = socket.recv().await {
                                match m {
                                    Message::Text(t) => {
                                        let v: Value =
                                            serde_json::from_str(t.as_str()).unwrap_or_default();
                                        let ev = v["event"].as_str().unwrap_or("?").to_string();
                                        lock_or_poisoned(&app.log).ws[idx].0.push(ev);
                                    }
                                    Message::Close(_) => break,
                                    _ => {}
                                }
                            }
                            lock_or_poisoned(&app.log).ws[idx].1 = true;
                        })
                    }
                }
            };
            let hit = {
                let app = app.clone();
                move |uri: Uri, headers: HeaderMap, body: Bytes| {
                    let app = app.clone();
                    async move {
                        let path = uri.path().to_string();
                        let form = url::form_urlencoded::parse(&body).into_owned().collect();
                        let signature = headers
                            .get(SIGNATURE_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        lock_or_poisoned(&app.log).hits.push(AppHit {
                            path: path.clone(),
                            signature,
                            form,
                            at: Instant::now(),
                        });
                        match lock_or_poisoned(&app.twiml).get(&path).cloned() {
                            Some(t) => ([(header::CONTENT_TYPE, "text/xml")], t).into_response(),
                            None => StatusCode::NO_CONTENT.into_response(),
                        }
                    }
                }
            };
            let router = Router::new()
                .route("/media", axum::routing::get(media))
                .fallback(hit);
            tokio::spawn(async move {
                let _ = axum::serve(listener, router).await;
            });
            app
        }

        fn url(&self, path: &str) -> String {
            format!("http://127.0.0.1:{}{path}", self.port)
        }

        fn set(&self, path: &str, twiml: &str) {
            lock_or_poisoned(&self.twiml).insert(path.into(), twiml.into());
        }

        fn hits(&self, path: &str) -> Vec<AppHit> {
            lock_or_poisoned(&self.log)
                .hits
                .iter()
                .filter(|h| h.path == path)
                .cloned()
                .collect()
        }

        fn ws(&self) -> Vec<(Vec<String>, bool)> {
            lock_or_poisoned(&self.log).ws.clone()
        }

        async fn wait_stream_started(&self, n: usize) {
            let ok = eventually(|| {
                self.ws()
                    .get(n)
                    .is_some_and(|(ev, _)| ev.iter().any(|e| e == "start"))
            })
            .await;
            assert!(ok, "media stream {n} never started: {:?}", self.ws());
        }

        /// The signature of a POST the emulator sent here is Twilio's.
        fn assert_signed(&self, h: &AppHit) {
            assert!(
                validate_signature(
                    "emulator_auth_token",
                    &self.url(&h.path),
                    &h.form,
                    &h.signature
                ),
                "bad signature on {} {:?}",
                h.path,
                h.form
            );
        }
    }

    const HUMAN: &str = "+14155550177";
    const AGENT_SIP: &str = "sip:agent@pbx.example.com";

    /// An emulator whose calls stream until hung up or redirected.
    async fn transfer_emulator(dial_outcomes: Vec<(String, DialOutcome)>) -> TwilioEmulator {
        emulator(TwilioEmulatorConfig {
            default_script: vec![CallerStep::Silence { ms: 30_000 }],
            dial_outcomes,
            ..TwilioEmulatorConfig::default()
        })
        .await
    }

    async fn api(
        em: &TwilioEmulator,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let url = format!(
            "{}/{API_VERSION}/Accounts/{}/{path}",
            em.base_url(),
            em.config().account_sid
        );
        let r = reqwest::Client::new()
            .request(method, url)
            .basic_auth(&em.config().account_sid, Some(&em.config().auth_token))
            .form(form)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn update(em: &TwilioEmulator, sid: &str, form: &[(&str, &str)]) -> Value {
        let (st, v) = api(
            em,
            reqwest::Method::POST,
            &format!("Calls/{sid}.json"),
            form,
        )
        .await;
        assert_eq!(st, 200, "{v}");
        v
    }

    /// A call to `to` streaming with the test app (the "AI leg").
    async fn streaming_call(em: &TwilioEmulator, app: &TestApp, to: &str) -> String {
        let status = app.url("/status");
        let voice = app.url("/voice");
        let (st, v) = api(
            em,
            reqwest::Method::POST,
            "Calls.json",
            &[
                ("To", to),
                ("From", FROM),
                ("Url", &voice),
                ("StatusCallback", &status),
            ],
        )
        .await;
        assert_eq!(st, 201, "{v}");
        let sid = v["sid"].as_str().expect("sid").to_string();
        let n = app.ws().len();
        app.wait_stream_started(n).await;
        sid
    }

    fn assert_stream_stopped(app: &TestApp, n: usize) {
        let ws = app.ws();
        let (events, closed) = &ws[n];
        assert_eq!(
            events.last().map(String::as_str),
            Some("stop"),
            "{events:?}"
        );
        assert!(closed);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn update_to_dial_number_ends_the_stream_and_bridges_the_human() {
        let app = TestApp::start().await;
        app.set("/after", "<Response><Say>Goodbye</Say></Response>");
        let em =
            transfer_emulator(vec![(HUMAN.into(), DialOutcome::Answer { stay_ms: 400 })]).await;
        let parent = streaming_call(&em, &app, "+14155550131").await;

        let dial = format!(
            "<Response><Dial callerId=\"+14155550100\" timeout=\"10\" action=\"{}\">\
             <Number statusCallback=\"{}\" statusCallbackEvent=\"initiated ringing answered completed\">{HUMAN}</Number>\
             </Dial></Response>",
            app.url("/after"),
            app.url("/child")
        );
        let r = update(&em, &parent, &[("Twiml", &dial)]).await;
        assert_eq!(r["status"], "in-progress");
        let legs = em.wait_dialed(&parent, DONE).await.expect("dialed");
        assert_eq!(legs.len(), 1);
        assert_eq!(
            (legs[0].kind, legs[0].to.as_str()),
            (DialKind::Number, HUMAN)
        );
        assert!(legs[0].sid.starts_with("CA") && legs[0].sid.len() == 34);
        let child_sid = legs[0].sid.clone();
        // The AI leg's media stream ended like on a real update.
        assert!(eventually(|| app.ws()[0].1).await);
        assert_stream_stopped(&app, 0);

        let call = em.wait_call_done(&parent, DONE).await.expect("parent ends");
        assert_eq!(call.status, "completed");
        assert_eq!(call.error, None);
        let leg = &call.dialed[0];
        assert_eq!(leg.status, "completed");
        assert_eq!(leg.dial_call_status.as_deref(), Some("completed"));
        assert!(leg.answered_at.is_some() && leg.ended_at.is_some());
        assert_eq!(leg.caller_id, FROM);
        assert_eq!(leg.action.as_deref(), Some(app.url("/after").as_str()));

        let child = em.call(&child_sid).expect("child call");
        assert_eq!(child.direction, "outbound-dial");
        assert_eq!(child.parent_call_sid.as_deref(), Some(parent.as_str()));
        assert_eq!(
            child.statuses(),
            ["queued", "initiated", "ringing", "in-progress", "completed"]
        );
        assert!(child.done);
        let child_cbs = app.hits("/child");
        let statuses: Vec<_> = child_cbs.iter().map(|h| h.param("CallStatus")).collect();
        assert_eq!(
            statuses,
            [
                Some("initiated"),
                Some("ringing"),
                Some("in-progress"),
                Some("completed")
            ]
        );
        for h in &child_cbs {
            app.assert_signed(h);
            assert_eq!(h.param("ParentCallSid"), Some(parent.as_str()));
            assert_eq!(h.param("Direction"), Some("outbound-dial"));
        }

        // The action: signed, with the dial result, after the human hung up.
        let action = app.hits("/after");
        assert_eq!(action.len(), 1);
        let a = &action[0];
        app.assert_signed(a);
        assert_eq!(a.param("CallSid"), Some(parent.as_str()));
        assert_eq!(a.param("CallStatus"), Some("in-progress"));
        assert_eq!(a.param("DialCallStatus"), Some("completed"));
        assert_eq!(a.param("DialCallSid"), Some(child_sid.as_str()));
        assert_eq!(
            a.param("DialCallDuration"),
            Some(child.duration.expect("duration").to_string().as_str())
        );
        assert!(a.at >= child_cbs.last().expect("completed").at);
        let sources: Vec<_> = call.twiml_executed.iter().map(|t| t.source).collect();
        assert_eq!(
            sources,
            [
                TwimlSource::Create,
                TwimlSource::Update,
                TwimlSource::DialAction
            ]
        );
        assert_eq!(call.twiml_executed[1].verbs, ["Dial"]);
        assert_eq!(call.said, ["Goodbye"]);
        let parent_cbs = app.hits("/status");
        assert_eq!(
            parent_cbs.last().and_then(|h| h.param("CallStatus")),
            Some("completed")
        );

        // The child call is listed, with its parent.
        let (st, v) = get_json(
            &em,
            &format!(
                "/{API_VERSION}/Accounts/{}/Calls.json?ParentCallSid={parent}",
                em.config().account_sid
            ),
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(sids(&v), std::slice::from_ref(&child_sid));
        assert_eq!(v["calls"][0]["direction"], "outbound-dial");
        assert_eq!(v["calls"][0]["parent_call_sid"], parent.as_str());
        assert_eq!(v["calls"][0]["from"], FROM);
        em.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dial_sip_simultaneous_numbers_and_hangup_during_dial() {
        let app = TestApp::start().await;
        app.set("/after", "<Response><Say>never run</Say></Response>");
        let ringing = "+14155550178";
        let em = transfer_emulator(vec![
            (AGENT_SIP.into(), DialOutcome::Answer { stay_ms: 300 }),
            (ringing.into(), DialOutcome::NoAnswer),
            (HUMAN.into(), DialOutcome::Answer { stay_ms: u64::MAX }),
        ])
        .await;

        // <Sip> without action: the parent completes when the agent hangs up.
        let parent = streaming_call(&em, &app, "+14155550132").await;
        let twiml = format!("<Response><Dial><Sip>{AGENT_SIP}</Sip></Dial></Response>");
        update(&em, &parent, &[("Twiml", &twiml)]).await;
        let call = em.wait_call_done(&parent, DONE).await.expect("ends");
        assert_eq!(call.status, "completed");
        assert_stream_stopped(&app, 0);
        let leg = &call.dialed[0];
        assert_eq!((leg.kind, leg.to.as_str()), (DialKind::Sip, AGENT_SIP));
        assert_eq!(leg.status, "completed");
        let child = em.call(&leg.sid).expect("child");
        assert_eq!(child.to, AGENT_SIP);
        assert!(
            call.end_time >= child.end_time,
            "the parent ends after its leg"
        );

        // Two numbers at once: the first to answer is bridged, the other hung up; a REST
        // hang-up of the parent ends the bridge and still requests the action.
        let parent = streaming_call(&em, &app, "+14155550133").await;
        let twiml = format!(
            "<Response><Dial action=\"{}\"><Number>{ringing}</Number><Number>{HUMAN}</Number></Dial><Say>not reached</Say></Response>",
            app.url("/after")
        );
        update(&em, &parent, &[("Twiml", &twiml)]).await;
        let answered = eventually(|| {
            em.dialed(&parent)
                .iter()
                .any(|l| l.to == HUMAN && l.status == "in-progress")
        })
        .await;
        assert!(answered, "{:?}", em.dialed(&parent));
        let r = update(&em, &parent, &[("Status", "completed")]).await;
        assert_eq!(r["status"], "completed");
        let call = em.wait_call_done(&parent, DONE).await.expect("ends");
        let by_to = |to: &str| {
            call.dialed
                .iter()
                .find(|l| l.to == to)
                .expect("leg")
                .clone()
        };
        // The other number was still ringing: it is hung up.
        assert_eq!(by_to(ringing).status, "canceled");
        let human = by_to(HUMAN);
        assert_eq!(human.status, "completed");
        assert_eq!(human.dial_call_status.as_deref(), Some("completed"));
        let a = app.hits("/after");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].param("CallStatus"), Some("completed"));
        assert_eq!(a[0].param("DialCallSid"), Some(human.sid.as_str()));
        assert!(
            call.said.is_empty(),
            "the action's TwiML is ignored: {:?}",
            call.said
        );
        em.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_and_unanswered_humans_report_to_the_action() {
        let app = TestApp::start().await;
        app.set(
            "/after",
            "<Response><Say>Sorry, nobody is free</Say><Hangup/></Response>",
        );
        let silent = "+14155550179";
        let em = transfer_emulator(vec![
            (HUMAN.into(), DialOutcome::Busy),
            (silent.into(), DialOutcome::NoAnswer),
        ])
        .await;
        for (to, timeout, want) in [(HUMAN, "10", "busy"), (silent, "1", "no-answer")] {
            let before = app.hits("/after").len();
            let parent = streaming_call(&em, &app, "+14155550134").await;
            let twiml = format!(
                "<Response><Dial timeout=\"{timeout}\" action=\"/after\"><Number>{to}</Number></Dial></Response>"
            );
            // A relative action is resolved against the document's URL (Url= here).
            app.set("/dial", &twiml);
            let dial_url = app.url("/dial");
            update(&em, &parent, &[("Url", &dial_url), ("Method", "POST")]).await;
            let call = em.wait_call_done(&parent, DONE).await.expect("ends");
            assert_eq!(call.status, "completed");
            assert_eq!(call.error, None, "{to}");
            let fetch = app.hits("/dial");
            let f = fetch.last().expect("the update's Url was fetched");
            app.assert_signed(f);
            assert_eq!(f.param("CallSid"), Some(parent.as_str()));
            let leg = &call.dialed[0];
            assert_eq!(leg.status, want);
            assert_eq!(leg.dial_call_status.as_deref(), Some(want));
            let hits = app.hits("/after");
            assert_eq!(hits.len(), before + 1);
            let a = &hits[before];
            app.assert_signed(a);
            assert_eq!(a.param("DialCallStatus"), Some(want));
            assert_eq!(a.param("DialCallSid"), Some(leg.sid.as_str()));
            assert_eq!(a.param("DialCallDuration"), Some("0"));
            assert_eq!(call.said, ["Sorry, nobody is free"]);
            let kinds: Vec<_> = call
                .callbacks
                .iter()
                .filter(|c| matches!(c.kind, CallbackKind::Redirect | CallbackKind::DialAction))
                .map(|c| c.kind)
                .collect();
            assert_eq!(kinds, [CallbackKind::Redirect, CallbackKind::DialAction]);
        }
        em.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn warm_transfer_through_a_conference() {
        let app = TestApp::start().await;
        app.set("/left", "<Response><Hangup/></Response>");
        let em =
            transfer_emulator(vec![(HUMAN.into(), DialOutcome::Answer { stay_ms: 500 })]).await;
        let caller = streaming_call(&em, &app, "+14155550135").await;

        // The caller goes into the conference; the AI leg (its stream) leaves.
        let twiml = format!(
            "<Response><Dial action=\"{}\"><Conference startConferenceOnEnter=\"true\" endConferenceOnExit=\"true\" waitUrl=\"\">transfer-1</Conference></Dial></Response>",
            app.url("/left")
        );
        update(&em, &caller, &[("Twiml", &twiml)]).await;
        let conf = em
            .wait_conference("transfer-1", "init", DONE)
            .await
            .expect("conference created");
        assert!(conf.sid.starts_with("CF") && conf.sid.len() == 34);
        assert!(eventually(|| app.ws()[0].1).await);
        assert_stream_stopped(&app, 0);
        let leg = &em.dialed(&caller)[0];
        assert_eq!(
            (leg.kind, leg.sid.as_str()),
            (DialKind::Conference, conf.sid.as_str())
        );

        let (st, v) = api(
            &em,
            reqwest::Method::GET,
            "Conferences.json?FriendlyName=transfer-1",
            &[],
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["conferences"][0]["sid"], conf.sid.as_str());
        assert_eq!(v["conferences"][0]["status"], "init");

        // The human is added as a participant; the conference starts when they answer.
        let pstatus = app.url("/pstatus");
        let (st, p) = api(
            &em,
            reqwest::Method::POST,
            &format!("Conferences/{}/Participants.json", conf.sid),
            &[
                ("From", FROM),
                ("To", HUMAN),
                ("Label", "agent"),
                ("EarlyMedia", "true"),
                ("Beep", "false"),
                ("StartConferenceOnEnter", "true"),
                ("EndConferenceOnExit", "false"),
                ("StatusCallback", &pstatus),
                ("StatusCallbackEvent", "answered completed"),
            ],
        )
        .await;
        assert_eq!(st, 201, "{p}");
        assert_eq!(p["status"], "queued");
        assert_eq!(p["label"], "agent");
        assert_eq!(p["conference_sid"], conf.sid.as_str());
        let human = p["call_sid"].as_str().expect("call sid").to_string();
        let conf = em
            .wait_conference("transfer-1", "in-progress", DONE)
            .await
            .expect("started");
        assert_eq!(conf.active_participants().len(), 2);
        let base = format!("Conferences/{}/Participants", conf.sid);
        let (_, list) = api(&em, reqwest::Method::GET, &format!("{base}.json"), &[]).await;
        let mut listed: Vec<&str> = list["participants"]
            .as_array()
            .expect("participants")
            .iter()
            .map(|p| p["call_sid"].as_str().unwrap_or_default())
            .collect();
        listed.sort_unstable();
        let mut want = vec![caller.as_str(), human.as_str()];
        want.sort_unstable();
        assert_eq!(listed, want);
        // Hold the caller by label-less SID, the agent by label.
        let (st, held) = api(
            &em,
            reqwest::Method::POST,
            &format!("{base}/{caller}.json"),
            &[("Hold", "true")],
        )
        .await;
        assert_eq!((st, &held["hold"]), (200, &json!(true)), "{held}");
        let (_, agent) = api(
            &em,
            reqwest::Method::GET,
            &format!("{base}/agent.json"),
            &[],
        )
        .await;
        assert_eq!(agent["call_sid"], human.as_str());
        assert_eq!(agent["status"], "connected");
        let (_, on_hold) = api(
            &em,
            reqwest::Method::GET,
            &format!("{base}.json?Hold=true"),
            &[],
        )
        .await;
        assert_eq!(on_hold["participants"].as_array().map(Vec::len), Some(1));
        api(
            &em,
            reqwest::Method::POST,
            &format!("{base}/{caller}.json"),
            &[("Hold", "false")],
        )
        .await;

        // The human hangs up: the caller stays in the (still running) conference…
        let h = em.wait_call_done(&human, DONE).await.expect("human done");
        assert_eq!(h.status, "completed");
        assert_eq!(h.direction, "outbound-api");
        let pcb: Vec<_> = app
            .hits("/pstatus")
            .iter()
            .map(|c| c.param("CallStatus").map(str::to_string))
            .collect();
        assert_eq!(
            pcb,
            [
                Some("in-progress".to_string()),
                Some("completed".to_string())
            ]
        );
        let conf = em.conference("transfer-1").expect("conference");
        assert_eq!(conf.status, "in-progress");
        assert_eq!(
            conf.participant(&human).map(|p| p.status.as_str()),
            Some("complete")
        );
        let (st, _) = api(
            &em,
            reqwest::Method::GET,
            &format!("{base}/{human}.json"),
            &[],
        )
        .await;
        assert_eq!(st, 404, "a participant that left is not listed");
        // …until it is removed: it had endConferenceOnExit, so the conference ends.
        let (st, body) = api(
            &em,
            reqwest::Method::DELETE,
            &format!("{base}/{caller}.json"),
            &[],
        )
        .await;
        assert_eq!((st, body), (204, Value::Null));
        let call = em.wait_call_done(&caller, DONE).await.expect("caller done");
        assert_eq!(call.status, "completed");
        let conf = em.conference(&conf.sid).expect("conference");
        assert_eq!(conf.status, "completed");
        assert_eq!(
            conf.reason_conference_ended.as_deref(),
            Some("participant-with-end-conference-on-exit-kicked")
        );
        assert_eq!(
            conf.call_sid_ending_conference.as_deref(),
            Some(caller.as_str())
        );
        let cp = conf.participant(&caller).expect("caller participant");
        assert!(cp.kicked && cp.joined_at.is_some() && cp.left_at.is_some());
        let hp = conf.participant(&human).expect("human participant");
        assert!(hp.via_api && hp.joined_at.is_some() && hp.left_at < cp.left_at);
        // The caller's <Dial> ended: its action was asked what next.
        let left = app.hits("/left");
        assert_eq!(left.len(), 1);
        app.assert_signed(&left[0]);
        assert_eq!(left[0].param("DialCallStatus"), Some("answered"));
        assert_eq!(call.dialed[0].status, "completed");
        let (_, v) = api(
            &em,
            reqwest::Method::GET,
            &format!("Conferences/{}.json", conf.sid),
            &[],
        )
        .await;
        assert_eq!(v["status"], "completed");
        assert_eq!(
            v["reason_conference_ended"],
            "participant-with-end-conference-on-exit-kicked"
        );
        assert_eq!(v["friendly_name"], "transfer-1");
        em.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conferences_end_when_empty_or_by_api() {
        let other = "+14155550176";
        let em = transfer_emulator(vec![
            (HUMAN.into(), DialOutcome::Answer { stay_ms: 300 }),
            (other.into(), DialOutcome::Answer { stay_ms: 600 }),
            (
                "+14155550175".into(),
                DialOutcome::Answer { stay_ms: u64::MAX },
            ),
            ("+14155550174".into(), DialOutcome::Busy),
        ])
        .await;
        let add = |conf: &str, to: &str| {
            let em = &em;
            let path = format!("Conferences/{conf}/Participants.json");
            let to = to.to_string();
            async move {
                let (st, v) = api(
                    em,
                    reqwest::Method::POST,
                    &path,
                    &[("From", FROM), ("To", &to)],
                )
                .await;
                assert_eq!(st, 201, "{v}");
                v["call_sid"].as_str().expect("sid").to_string()
            }
        };
        // By friendly name: created on the first participant.
        let a = add("standup", HUMAN).await;
        let b = add("standup", other).await;
        let conf = em
            .wait_conference("standup", "in-progress", DONE)
            .await
            .expect("started");
        let conf = em
            .wait_conference(&conf.sid, "completed", DONE)
            .await
            .expect("ended");
        assert_eq!(
            conf.reason_conference_ended.as_deref(),
            Some("last-participant-left")
        );
        assert_eq!(conf.call_sid_ending_conference.as_deref(), Some(b.as_str()));
        assert!(conf.participants.iter().all(|p| p.status == "complete"));
        assert!(conf.participant(&a).and_then(|p| p.left_at).is_some());
        let (st, v) = api(
            &em,
            reqwest::Method::GET,
            &format!("Conferences/{}/Participants.json", conf.sid),
            &[],
        )
        .await;
        assert_eq!(st, 200);
        assert_eq!(v["participants"], json!([]));
        // A completed conference takes no one; the name starts a new conference.
        let (st, v) = api(
            &em,
            reqwest::Method::POST,
            &format!("Conferences/{}/Participants.json", conf.sid),
            &[("From", FROM), ("To", HUMAN)],
        )
        .await;
        assert_eq!(st, 400, "{v}");

        // Ended by the API: the participant call is hung up.
        let c = add("all-hands", "+14155550175").await;
        let live = em
            .wait_conference("all-hands", "init", DONE)
            .await
            .expect("init");
        assert!(
            eventually(|| em
                .conference("all-hands")
                .is_some_and(|c| c.participants[0].status == "connected"))
            .await
        );
        let (st, v) = api(
            &em,
            reqwest::Method::POST,
            &format!("Conferences/{}.json", live.sid),
            &[("Status", "completed")],
        )
        .await;
        assert_eq!(st, 200, "{v}");
        assert_eq!(v["status"], "completed");
        assert_eq!(v["reason_conference_ended"], "conference-ended-via-api");
        let call = em
            .wait_call_done(&c, DONE)
            .await
            .expect("participant call ends");
        assert_eq!(call.status, "completed");
        // A participant who never answers leaves a conference with no one: it ends.
        add("lonely", "+14155550174").await;
        let lonely = em
            .wait_conference("lonely", "completed", DONE)
            .await
            .expect("ended");
        assert_eq!(lonely.participants[0].status, "failed");

        // Listing and errors.
        let (_, v) = api(
            &em,
            reqwest::Method::GET,
            "Conferences.json?Status=completed&PageSize=2",
            &[],
        )
        .await;
        assert_eq!(v["conferences"].as_array().map(Vec::len), Some(2));
        assert!(
            v["next_page_uri"]
                .as_str()
                .is_some_and(|u| u.contains("Page=1")),
            "{v}"
        );
        assert_eq!(v["conferences"][0]["friendly_name"], "lonely");
        let (st, v) = api(
            &em,
            reqwest::Method::GET,
            "Conferences.json?Status=ended",
            &[],
        )
        .await;
        assert_eq!((st, v["code"].as_u64()), (400, Some(20001)));
        let unknown = format!("CF{}", "0".repeat(32));
        let (st, v) = api(
            &em,
            reqwest::Method::GET,
            &format!("Conferences/{unknown}.json"),
            &[],
        )
        .await;
        assert_eq!((st, v["code"].as_u64()), (404, Some(20404)));
        let (st, _) = api(&em, reqwest::Method::POST, "Conferences.json", &[]).await;
        assert_eq!(st, 405);
        let (st, v) = api(
            &em,
            reqwest::Method::POST,
            "Conferences/x/Participants.json",
            &[("From", FROM), ("To", "nope")],
        )
        .await;
        assert_eq!((st, v["code"].as_u64()), (400, Some(21211)));
        em.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_twiml_is_an_application_error() {
        let app = TestApp::start().await;
        app.set("/bad", "<Response><Say>oops</Response>");
        let em = transfer_emulator(Vec::new()).await;
        let bad_url = app.url("/bad");
        for (i, form) in [
            vec![("Twiml", "<Response><Dial>+14155550177</Response>")],
            vec![("Url", bad_url.as_str())],
            vec![("Twiml", "<Dial>+14155550177</Dial>")],
        ]
        .into_iter()
        .enumerate()
        {
            let sid = streaming_call(&em, &app, "+14155550136").await;
            update(&em, &sid, &form).await;
            let call = em.wait_call_done(&sid, DONE).await.expect("ends");
            assert_eq!(call.status, "completed", "{form:?}");
            assert_eq!(call.error_code, Some(12100), "{form:?} {:?}", call.error);
            assert!(call.error.as_deref().is_some_and(|e| e.contains("12100")));
            assert_eq!(
                call.twiml_executed.last().and_then(|t| t.error),
                Some(12100)
            );
            assert!(call.dialed.is_empty());
            assert_stream_stopped(&app, i);
        }
        // A Url that cannot be fetched: 11200.
        let sid = streaming_call(&em, &app, "+14155550136").await;
        update(&em, &sid, &[("Url", "http://127.0.0.1:9/nowhere")]).await;
        let call = em.wait_call_done(&sid, DONE).await.expect("ends");
        assert_eq!(
            (call.status.as_str(), call.error_code),
            ("completed", Some(11200))
        );
        // Bad update params are refused.
        let (st, v) = api(
            &em,
            reqwest::Method::POST,
            &format!("Calls/{sid}.json"),
            &[("Url", "not a url")],
        )
        .await;
        assert_eq!((st, v["code"].as_u64()), (400, Some(21205)));
        em.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redirect_before_answer_runs_when_answered() {
        let app = TestApp::start().await;
        let em = TwilioEmulator::start(TwilioEmulatorConfig {
            ring_ms: 1000,
            ..TwilioEmulatorConfig::default()
        })
        .await
        .expect("emulator");
        let voice = app.url("/voice");
        let (_, v) = api(
            &em,
            reqwest::Method::POST,
            "Calls.json",
            &[("To", "+14155550137"), ("From", FROM), ("Url", &voice)],
        )
        .await;
        let sid = v["sid"].as_str().expect("sid").to_string();
        em.wait_status(&sid, "ringing", DONE)
            .await
            .expect("ringing");
        update(&em, &sid, &[("Twiml", "<Response><Say>Hello there</Say><Pause length=\"0\"/><Hangup/><Say>never</Say></Response>")]).await;
        let call = em.wait_call_done(&sid, DONE).await.expect("ends");
        assert_eq!(call.status, "completed");
        assert_eq!(call.said, ["Hello there"]);
        assert!(
            app.hits("/voice").is_empty(),
            "the create's Url is not fetched"
        );
        assert!(app.ws().is_empty());
        assert_eq!(call.twiml_executed.len(), 1);
        assert_eq!(call.twiml_executed[0].verbs, ["Say", "Pause", "Hangup"]);
        em.shutdown().await;
    }
}
