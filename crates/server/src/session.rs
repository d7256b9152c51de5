//! CallSession: one task per call, owning the Twilio media socket and the
//! model socket. No state is shared with other calls.
//!
//! The session starts once Twilio's `start` has arrived (see
//! [`crate::app`]); the model socket may still be opening at that point
//! (it was pre-connected when the voice webhook was answered), so caller
//! audio that arrives first is kept in a bounded buffer.
//!
//! Audio is relayed without decoding: a Twilio `media.payload` becomes the
//! `audio` of an `input_audio_buffer.append` as is, and model deltas are
//! only base64-decoded to be cut into 20 ms frames by [`Playback`].

use crate::hub::{CallEventKind, EventHub, Speaker};
use crate::playback::{Note, Outbox, PacerConfig, Playback};
use crate::tools::{
    self, Action, CallTools, FunctionCall, HttpResult, TransferTarget, VoicemailPlan,
};
use crate::ws::{CLOSE_ERROR, CLOSE_NORMAL, CLOSE_TOO_BIG, Link, WsIn, WsOut};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use voxbridge_audio::{BYTES_PER_MS, FRAME_BYTES, MULAW_SILENCE};
use voxbridge_realtime::client::{ClientEvent, Item, ResponseParams, write_append};
use voxbridge_realtime::server::{self as rt, ServerEvent};
use voxbridge_realtime::session::{SessionConfig, TurnDetection};
use voxbridge_twilio::media::{self, Inbound, Start};

/// Longest gap in the caller's timestamps filled with silence.
pub const MAX_GAP_FILL_MS: u64 = 10_000;
/// Time allowed to close the model socket politely at the end of a call.
const CLOSE_GRACE: Duration = Duration::from_millis(500);
/// Bad frames logged per call at warn level (the rest at debug).
const WARN_LIMIT: u64 = 5;

/// What one call needs to know, fixed when the call is answered.
#[derive(Debug, Clone)]
pub struct CallSettings {
    /// The session to configure (formats are always µ-law).
    pub session: SessionConfig,
    /// Turn detection as configured, restored after a protected greeting.
    pub turn_detection: Option<TurnDetection>,
    /// Instructions for the agent's first words; `None`: the caller speaks first.
    pub greeting: Option<String>,
    /// The greeting is a disclosure that barge-in must not cut.
    pub greeting_protected: bool,
    pub pacer: PacerConfig,
    /// Caller audio kept while the model socket opens.
    pub input_buffer_ms: u64,
    /// The agent's tools (declared in `session.tools`), transfer target and voicemail plan.
    pub tools: Arc<CallTools>,
    /// The agent's call length limit: the call ends (after the agent's current words) when
    /// it is reached.
    pub max_duration: Option<Duration>,
    /// End the call when neither side has spoken for this long.
    pub silence_timeout: Option<Duration>,
}

impl CallSettings {
    /// The session for the first `session.update`: while a protected
    /// greeting plays, the server must not cancel it on its own either.
    pub fn initial_session(&self) -> SessionConfig {
        let mut s = self.session.clone();
        if self.greeting.is_some() && self.greeting_protected {
            s.audio.input.turn_detection = self
                .turn_detection
                .as_ref()
                .map(|t| t.with_interrupt_response(false));
        }
        s
    }

    /// The `session.update` event for `session`.
    pub fn session_update(session: SessionConfig) -> String {
        ClientEvent::SessionUpdate {
            session: Box::new(session),
        }
        .to_json()
    }
}

/// A boxed future that owns what it needs.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Call control the tools need, per transport: Twilio's REST API for Media Streams calls,
/// the Realtime Calls API (`/refer`, `/hangup`) for SIP connector calls.
pub trait CallControl: Send + Sync {
    /// Hand the call to a person; `Ok` with a description of what was done.
    fn transfer(&self, target: TransferTarget) -> BoxFuture<Result<String, String>>;
    /// End the call at the carrier (the session has stopped talking).
    fn hangup(&self) -> BoxFuture<Result<(), String>>;
}

/// News for a running session from other request handlers.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// Twilio's asynchronous answering-machine detection: `human`, `machine_start`,
    /// `machine_end_beep`, `machine_end_silence`, `machine_end_other`, `fax`, `unknown`.
    AnsweredBy(String),
}

/// Where a session's audio is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Twilio Media Streams: audio flows through this session.
    #[default]
    MediaStreams,
    /// OpenAI SIP connector: audio flows between the carrier and OpenAI; this session only
    /// holds the sideband control socket.
    Sideband,
}

/// What a call has besides its settings: the means to act on the call.
#[derive(Default)]
pub struct CallContext {
    pub control: Option<Arc<dyn CallControl>>,
    pub signals: Option<mpsc::UnboundedReceiver<Signal>>,
    /// For HTTP tools.
    pub http: Option<reqwest::Client>,
    /// Outbound calls: the greeting waits for a person (machine detection says human, or
    /// the callee speaks) at most this long, so it never plays into a voicemail greeting.
    pub greeting_wait: Option<Duration>,
    /// The other party's number (the callee of an outbound call), for `opt_out`.
    pub peer_number: Option<String>,
    pub transport: Transport,
}

/// Sideband calls: the carrier plays the agent's audio; the words are taken as played this
/// long after the response is done.
const SIDEBAND_TAIL: Duration = Duration::from_millis(1_500);
/// Longest the session waits for the agent's last words before ending or transferring.
const ENDING_TIMEOUT: Duration = Duration::from_secs(20);
/// After a transfer request succeeded, how long to wait for Twilio's `stop`.
const TRANSFER_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// After a voicemail greeting starts, how long to wait for its beep.
const BEEP_TIMEOUT: Duration = Duration::from_secs(20);

/// An asynchronous tool finished.
enum ToolDone {
    Http {
        call: FunctionCall,
        result: HttpResult,
    },
    Transfer {
        target: TransferTarget,
        result: Result<String, String>,
    },
}

/// The call is winding down once the agent's words have played.
#[derive(Debug)]
struct Ending {
    then: Then,
    deadline: Instant,
    /// A goodbye response was requested and has not been created yet.
    awaiting_response: bool,
    /// Sideband: the server plays the audio; the last response ended at this instant.
    spoken_until: Option<Instant>,
}

#[derive(Debug, Clone)]
enum Then {
    Hangup(EndReason),
    Transfer(TransferTarget),
    /// The transfer was requested; Twilio will stop the stream.
    AwaitStop(String),
}

/// Voicemail handling.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Machine {
    No,
    /// A machine answered; its greeting plays until the beep.
    AwaitBeep(Instant),
    /// The message is being left.
    Leaving,
}

/// The model side once connected.
pub struct ModelLink {
    pub link: Link,
    /// The opener already sent the initial `session.update`.
    pub session_update_sent: bool,
}

/// Opens (or has opened) the model socket.
pub type ModelFuture = Pin<Box<dyn Future<Output = Result<ModelLink, String>> + Send>>;

/// Why a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum EndReason {
    /// Twilio sent `stop`.
    TwilioStop,
    /// The Twilio socket closed or failed.
    TwilioClosed(String),
    /// A message from Twilio was larger than allowed.
    TwilioFrameTooBig,
    /// The model socket closed or failed.
    ModelClosed(String),
    /// The model socket could not be opened.
    ModelConnectFailed(String),
    /// The session did not confirm µ-law both ways.
    FormatMismatch(String),
    /// The agent ended the call (`end_call`, `opt_out`), after its last words.
    AgentEnded(String),
    /// The call was handed to a person.
    Transferred(String),
    /// A machine answered: the message was left (or not), then the call ended.
    Voicemail(String),
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndReason::TwilioStop => write!(f, "twilio_stop"),
            EndReason::TwilioClosed(why) => write!(f, "twilio_closed: {why}"),
            EndReason::TwilioFrameTooBig => write!(f, "twilio_frame_too_big"),
            EndReason::ModelClosed(why) => write!(f, "model_closed: {why}"),
            EndReason::ModelConnectFailed(why) => write!(f, "model_connect_failed: {why}"),
            EndReason::FormatMismatch(why) => write!(f, "audio_format_mismatch: {why}"),
            EndReason::AgentEnded(why) => write!(f, "agent_ended: {why}"),
            EndReason::Transferred(to) => write!(f, "transferred: {to}"),
            EndReason::Voicemail(what) => write!(f, "voicemail: {what}"),
        }
    }
}

/// Latency of one caller turn.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TurnTiming {
    /// Caller stopped speaking -> first agent audio from the model (ms).
    pub model_ms: Option<u64>,
    /// Caller stopped speaking -> Twilio confirmed the first audio played (ms).
    pub heard_ms: Option<u64>,
}

/// What happened on the call, returned when it ends.
#[derive(Debug, Clone, Default)]
pub struct CallSummary {
    pub end_reason: Option<EndReason>,
    pub frames_in: u64,
    pub frames_out: u64,
    pub bad_frames: u64,
    pub silence_filled_ms: u64,
    pub dropped_input_frames: u64,
    pub barge_ins: u64,
    pub barge_ins_ignored: u64,
    pub dtmf: Vec<String>,
    pub turns: Vec<TurnTiming>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub model_errors: Vec<String>,
    /// Tool calls: (name, ok).
    pub tool_calls: Vec<(String, bool)>,
}

/// A media payload that is not valid base64 (or is empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadPayload;

/// The uplink hot path: Twilio `media` payloads become
/// `input_audio_buffer.append` events without decoding the audio; gaps in
/// the caller's timestamps are filled with µ-law silence (bounded).
#[derive(Debug, Default)]
pub struct Uplink {
    /// Next expected caller timestamp (ms).
    expected_ts: Option<u64>,
    /// Scratch buffer for the base64 check.
    scratch: Vec<u8>,
    /// Silence inserted so far (ms).
    pub silence_filled_ms: u64,
}

impl Uplink {
    /// Turn one media payload into append events pushed onto `out`.
    pub fn on_media(
        &mut self,
        timestamp_ms: u64,
        payload: &str,
        out: &mut Vec<String>,
    ) -> Result<(), BadPayload> {
        // Check the base64 without keeping the audio: the model rejects bad
        // base64 with an error event, and the length is needed for gaps.
        self.scratch.clear();
        if B64.decode_vec(payload, &mut self.scratch).is_err() || self.scratch.is_empty() {
            return Err(BadPayload);
        }
        let ms = (self.scratch.len() / BYTES_PER_MS) as u64;
        if let Some(expected) = self.expected_ts
            && timestamp_ms > expected
        {
            self.fill_silence((timestamp_ms - expected).min(MAX_GAP_FILL_MS), out);
        }
        self.expected_ts = Some(timestamp_ms.max(self.expected_ts.unwrap_or(0)) + ms);
        let mut msg = String::with_capacity(payload.len() + 48);
        write_append(&mut msg, payload);
        out.push(msg);
        Ok(())
    }

    fn fill_silence(&mut self, ms: u64, out: &mut Vec<String>) {
        self.silence_filled_ms += ms;
        let silence = [MULAW_SILENCE; FRAME_BYTES * 50];
        let mut left = ms as usize * BYTES_PER_MS;
        while left > 0 {
            let n = left.min(silence.len());
            let mut msg = String::with_capacity(n * 4 / 3 + 64);
            write_append(&mut msg, &B64.encode(&silence[..n]));
            out.push(msg);
            left -= n;
        }
    }
}

enum Wake {
    Twilio(Option<WsIn>),
    ModelReady(Result<ModelLink, String>),
    Model(Option<WsIn>),
    Pace,
    Tool(ToolDone),
    Signal(Signal),
}

struct Session {
    call_id: String,
    stream_sid: String,
    settings: Arc<CallSettings>,
    hub: EventHub,
    playback: Playback,
    model: Option<Link>,
    /// Client events waiting for the model socket (bounded).
    pre_model: VecDeque<String>,
    pre_model_cap: usize,
    /// Caller audio -> model appends, with gap filling.
    uplink: Uplink,
    /// The effective session has `interrupt_response: true`.
    server_interrupts: bool,
    session_confirmed: bool,
    greeting_requested: bool,
    protect_next_response: bool,
    /// When the caller last stopped speaking.
    speech_stopped_at: Option<Instant>,
    /// Turn start per response id, until its first audio is heard.
    turn_of_response: HashMap<String, (Instant, usize)>,
    /// Responses whose first delta has been seen.
    first_delta_seen: Vec<String>,
    summary: CallSummary,
    out: Outbox,
    ctx: CallContext,
    /// Results of asynchronous tools (HTTP tools, transfers) come back here.
    tool_tx: Option<mpsc::UnboundedSender<ToolDone>>,
    /// A receiver for the loop to take (created with `tool_tx`).
    new_tool_rx: Option<mpsc::UnboundedReceiver<ToolDone>>,
    /// The greeting waits (outbound) until this instant unless a person shows up first.
    greeting_gate: Option<Instant>,
    ending: Option<Ending>,
    machine: Machine,
    /// When the last response was done (sideband: its audio plays out after that).
    last_response_done: Option<Instant>,
    transfer_announced: bool,
    /// A `response.create` waiting for the active response to finish.
    queued_response: Option<Option<ResponseParams>>,
    /// When the call must end (the agent's max call duration).
    hard_stop: Option<Instant>,
    /// Last sign of speech from either side (for the silence timeout).
    last_activity: Instant,
}

/// Run a call until either side ends it.
#[tracing::instrument(name = "call", skip_all, fields(call_id = %call_id, stream_sid = %start.stream_sid))]
pub async fn run(
    call_id: String,
    start: Start,
    mut twilio: Link,
    model: ModelFuture,
    settings: Arc<CallSettings>,
    hub: EventHub,
    mut ctx: CallContext,
) -> CallSummary {
    // Created on the first asynchronous tool (most calls have none: no channel to poll).
    let mut tool_rx: Option<mpsc::UnboundedReceiver<ToolDone>> = None;
    let mut signals = ctx.signals.take();
    let mut playback = Playback::new(settings.pacer);
    playback.start(&start.stream_sid);
    let pre_model_cap = (settings.input_buffer_ms / voxbridge_audio::FRAME_MS).max(1) as usize;
    let server_interrupts = settings
        .initial_session()
        .audio
        .input
        .turn_detection
        .as_ref()
        .is_some_and(TurnDetection::interrupt_response);
    let mut s = Session {
        call_id: call_id.clone(),
        stream_sid: start.stream_sid.clone(),
        settings,
        hub,
        playback,
        model: None,
        pre_model: VecDeque::new(),
        pre_model_cap,
        uplink: Uplink::default(),
        server_interrupts,
        session_confirmed: false,
        greeting_requested: false,
        protect_next_response: false,
        speech_stopped_at: None,
        turn_of_response: HashMap::new(),
        first_delta_seen: Vec::new(),
        summary: CallSummary::default(),
        out: Outbox::default(),
        ctx,
        tool_tx: None,
        new_tool_rx: None,
        greeting_gate: None,
        ending: None,
        machine: Machine::No,
        last_response_done: None,
        transfer_announced: false,
        queued_response: None,
        hard_stop: None,
        last_activity: Instant::now(),
    };
    s.hard_stop = s.settings.max_duration.map(|d| Instant::now() + d);
    s.hub.publish(
        &call_id,
        CallEventKind::StreamStarted {
            stream_sid: start.stream_sid.clone(),
            call_sid: start.call_sid.clone(),
        },
    );
    let mut pending: Option<ModelFuture> = Some(model);
    // One timer per call, re-armed only when its deadline moves (a fresh timer per loop
    // turn would cost a timer-wheel insert and removal for every frame in either
    // direction): the pacer's next frame, or the session's own deadlines (greeting wait,
    // voicemail beep, ending, call length, silence), whichever comes first.
    let pacer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(pacer);
    let mut armed: Option<Instant> = None;
    let reason = loop {
        let due = s.next_timer();
        let deadline = match (s.playback.next_deadline(), due) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(d) = deadline
            && armed != Some(d)
        {
            pacer.as_mut().reset(d);
            armed = Some(d);
        }
        if let Some(rx) = s.new_tool_rx.take() {
            tool_rx = Some(rx);
        }
        let wake = tokio::select! {
            m = twilio.next() => Wake::Twilio(m),
            r = async { match pending.as_mut() { Some(f) => f.await, None => std::future::pending().await } }, if pending.is_some() => Wake::ModelReady(r),
            m = async { match s.model.as_mut() { Some(l) => l.next().await, None => std::future::pending().await } }, if s.model.is_some() => Wake::Model(m),
            () = &mut pacer, if deadline.is_some() => {
                armed = None;
                Wake::Pace
            }
            Some(done) = async { match tool_rx.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } }, if tool_rx.is_some() => Wake::Tool(done),
            Some(sig) = async { match signals.as_mut() { Some(r) => r.recv().await, None => std::future::pending().await } }, if signals.is_some() => Wake::Signal(sig),
        };
        let step = match wake {
            Wake::Twilio(m) => s.on_twilio(m),
            Wake::ModelReady(r) => {
                pending = None;
                s.on_model_ready(r)
            }
            Wake::Model(m) => s.on_model(m),
            Wake::Pace => {
                let now = Instant::now();
                let mut out = std::mem::take(&mut s.out);
                s.playback.pump(now, &mut out);
                s.out = out;
                if due.is_some_and(|t| t <= now) {
                    s.on_timer()
                } else {
                    Ok(())
                }
            }
            Wake::Tool(done) => s.on_tool_done(done),
            Wake::Signal(sig) => s.on_signal(sig),
        };
        let step = step
            .and_then(|()| s.check_ending())
            .map_err(|e| s.transferred_stop(e));
        // Audio due now goes out with whatever this step produced.
        if !s.out.twilio.is_empty() || s.playback.next_deadline().is_some() {
            let mut out = std::mem::take(&mut s.out);
            s.playback.pump(Instant::now(), &mut out);
            s.out = out;
        }
        s.handle_notes();
        if let Err(e) = s.flush(&mut twilio).await {
            break e;
        }
        if let Err(reason) = step {
            break reason;
        }
    };
    s.finish(reason, twilio).await
}

impl Session {
    fn on_twilio(&mut self, msg: Option<WsIn>) -> Result<(), EndReason> {
        let text = match msg {
            None => return Err(EndReason::TwilioClosed("socket ended".into())),
            Some(WsIn::Close(c)) => {
                return Err(EndReason::TwilioClosed(match c {
                    Some((code, reason)) => format!("close {code} {reason}"),
                    None => "close".into(),
                }));
            }
            Some(WsIn::Error(e)) => {
                if e.contains("too long") || e.contains("too big") || e.contains("Space limit") {
                    return Err(EndReason::TwilioFrameTooBig);
                }
                return Err(EndReason::TwilioClosed(e));
            }
            Some(WsIn::Binary(len)) => {
                self.bad_frame(format_args!("binary frame of {len} bytes ignored"));
                return Ok(());
            }
            Some(WsIn::Text(t)) => t,
        };
        let parsed = media::parse(text.as_str());
        match parsed {
            Ok(Inbound::Media(m)) => {
                if m.track != "inbound" {
                    return Ok(());
                }
                self.on_caller_audio(m.timestamp_ms, &m.payload);
            }
            Ok(Inbound::Mark { name }) => {
                let mut out = std::mem::take(&mut self.out);
                self.playback.mark_echo(&name, &mut out);
                self.out = out;
            }
            Ok(Inbound::Dtmf { digit }) => self.on_dtmf(digit),
            Ok(Inbound::Stop) => return Err(EndReason::TwilioStop),
            Ok(Inbound::Connected) => {}
            Ok(Inbound::Start(_)) => self.bad_frame(format_args!("second start ignored")),
            Ok(Inbound::Unknown { event }) => debug!(%event, "unknown Twilio event"),
            Err(e) => self.bad_frame(format_args!("unparseable Twilio frame: {e}")),
        }
        Ok(())
    }

    fn bad_frame(&mut self, what: std::fmt::Arguments<'_>) {
        self.summary.bad_frames += 1;
        if self.summary.bad_frames <= WARN_LIMIT {
            warn!("{what}");
        } else {
            debug!("{what}");
        }
    }

    /// Forward 20 ms of caller audio, after silence for any gap before it.
    fn on_caller_audio(&mut self, timestamp_ms: u64, payload: &str) {
        match self
            .uplink
            .on_media(timestamp_ms, payload, &mut self.out.model)
        {
            Ok(()) => self.summary.frames_in += 1,
            Err(BadPayload) => {
                self.bad_frame(format_args!("media with invalid base64 payload dropped"));
            }
        }
    }

    fn on_dtmf(&mut self, digit: String) {
        info!(%digit, "caller pressed a key");
        self.hub.publish(
            &self.call_id,
            CallEventKind::Dtmf {
                digit: digit.clone(),
            },
        );
        self.out.model.push(
            ClientEvent::ConversationItemCreate {
                item: Item::user_text(format!("[caller pressed {digit}]")),
            }
            .to_json(),
        );
        if self.playback.active_response().is_none() {
            self.request_response(None);
        }
        self.summary.dtmf.push(digit);
    }

    fn on_model_ready(&mut self, r: Result<ModelLink, String>) -> Result<(), EndReason> {
        let link = r.map_err(EndReason::ModelConnectFailed)?;
        if !link.session_update_sent {
            self.pre_model.push_front(CallSettings::session_update(
                self.settings.initial_session(),
            ));
        }
        self.model = Some(link.link);
        if self.ctx.transport == Transport::Sideband && !self.session_confirmed {
            // The call was accepted with its session: nothing to confirm, no audio formats
            // to check (the carrier and OpenAI negotiate them over SIP).
            self.session_confirmed = true;
            self.greet();
        }
        Ok(())
    }

    fn on_model(&mut self, msg: Option<WsIn>) -> Result<(), EndReason> {
        let text = match msg {
            None => return Err(EndReason::ModelClosed("socket ended".into())),
            Some(WsIn::Close(c)) => {
                return Err(EndReason::ModelClosed(match c {
                    Some((code, reason)) => format!("close {code} {reason}"),
                    None => "close".into(),
                }));
            }
            Some(WsIn::Error(e)) => return Err(EndReason::ModelClosed(e)),
            Some(WsIn::Binary(len)) => {
                warn!(len, "binary frame from the model ignored");
                return Ok(());
            }
            Some(WsIn::Text(t)) => t,
        };
        let event = match rt::parse(text.as_str()) {
            Ok(e) => e,
            Err(e) => {
                warn!(error = %e, "unparseable model event ignored");
                return Ok(());
            }
        };
        match event {
            ServerEvent::AudioDelta {
                response_id,
                item_id,
                content_index,
                delta,
            } => {
                if self
                    .playback
                    .audio_delta(&response_id, &item_id, content_index, &delta)
                    && !self.first_delta_seen.iter().any(|r| **r == *response_id)
                {
                    self.first_delta_seen.push(response_id.to_string());
                    if self.first_delta_seen.len() > 16 {
                        self.first_delta_seen.remove(0);
                    }
                    if let Some((t0, idx)) = self.turn_of_response.get(response_id.as_ref()) {
                        let ms = t0.elapsed().as_millis() as u64;
                        if let Some(t) = self.summary.turns.get_mut(*idx) {
                            t.model_ms = Some(ms);
                        }
                    }
                }
            }
            ServerEvent::AudioDone {
                response_id,
                item_id,
                ..
            } => self.playback.audio_done(&response_id, &item_id),
            ServerEvent::SessionCreated(_) => {}
            ServerEvent::SessionUpdated(_) if self.ctx.transport == Transport::Sideband => {}
            ServerEvent::SessionUpdated(info) => {
                let pcmu_in = info.input_format.as_ref().is_some_and(|f| f.is_pcmu());
                let pcmu_out = info.output_format.as_ref().is_some_and(|f| f.is_pcmu());
                if !pcmu_in || !pcmu_out {
                    let name = |f: Option<voxbridge_realtime::session::AudioFormat>| {
                        f.map_or_else(|| "none".to_owned(), |f| f.kind)
                    };
                    let why = format!(
                        "model audio is {} in, {} out; Twilio needs audio/pcmu",
                        name(info.input_format),
                        name(info.output_format)
                    );
                    return Err(EndReason::FormatMismatch(why));
                }
                self.server_interrupts = info.turn_detection.is_some() && info.interrupt_response;
                if !self.session_confirmed {
                    self.session_confirmed = true;
                    self.greet();
                }
            }
            ServerEvent::SpeechStarted { .. } => {
                // Someone is there: an outbound greeting need not wait any longer.
                self.last_activity = Instant::now();
                self.release_greeting("the callee spoke");
                if self.playback.is_playing() || self.playback.active_response().is_some() {
                    let mut out = std::mem::take(&mut self.out);
                    self.playback.barge_in(!self.server_interrupts, &mut out);
                    self.out = out;
                }
            }
            ServerEvent::SpeechStopped { .. } => {
                self.speech_stopped_at = Some(Instant::now());
                // A machine's greeting ended: leave the message now.
                if matches!(self.machine, Machine::AwaitBeep(_)) {
                    self.leave_voicemail();
                }
            }
            ServerEvent::ResponseCreated { response_id } => {
                if self.protect_next_response {
                    self.protect_next_response = false;
                    self.playback.protect_response(&response_id);
                }
                self.playback.response_created(&response_id);
                if let Some(e) = self.ending.as_mut() {
                    e.awaiting_response = false;
                    e.spoken_until = None;
                }
                if let Some(t0) = self.speech_stopped_at.take() {
                    self.summary.turns.push(TurnTiming::default());
                    self.turn_of_response
                        .insert(response_id, (t0, self.summary.turns.len() - 1));
                }
            }
            ServerEvent::ResponseDone {
                response_id,
                status,
                usage,
            } => {
                debug!(%response_id, %status, "response done");
                self.playback.response_done(&response_id);
                self.last_response_done = Some(Instant::now());
                self.last_activity = Instant::now();
                if let Some(params) = self.queued_response.take() {
                    self.request_response(params);
                }
                if let Some(u) = usage {
                    let cached = u
                        .input_token_details
                        .as_ref()
                        .map_or(0, |d| d.cached_tokens);
                    self.summary.input_tokens += u.input_tokens;
                    self.summary.output_tokens += u.output_tokens;
                    self.summary.cached_tokens += cached;
                    self.hub.publish(
                        &self.call_id,
                        CallEventKind::Usage {
                            input_tokens: u.input_tokens,
                            output_tokens: u.output_tokens,
                            cached_tokens: cached,
                        },
                    );
                }
            }
            ServerEvent::AudioTranscriptDone { transcript, .. } => {
                self.hub.publish(
                    &self.call_id,
                    CallEventKind::Transcript {
                        speaker: Speaker::Agent,
                        text: transcript,
                    },
                );
            }
            ServerEvent::InputTranscriptionCompleted { transcript, .. } => {
                self.hub.publish(
                    &self.call_id,
                    CallEventKind::Transcript {
                        speaker: Speaker::Caller,
                        text: transcript,
                    },
                );
            }
            ServerEvent::InputTranscriptionFailed { message, .. } => {
                debug!(%message, "caller transcription failed");
            }
            ServerEvent::DtmfReceived { digit } => self.on_dtmf(digit),
            ServerEvent::Error(e) => {
                warn!(code = ?e.code, message = %e.message, "model error event");
                let message = format!(
                    "model error {}: {}",
                    e.code.as_deref().unwrap_or(&e.kind),
                    e.message
                );
                self.summary.model_errors.push(message.clone());
                self.hub
                    .publish(&self.call_id, CallEventKind::Warning { message });
            }
            ServerEvent::OutputItemDone { item, .. } if item.kind == "function_call" => {
                let call = FunctionCall {
                    call_id: item.call_id.unwrap_or_default(),
                    name: item.name.unwrap_or_default(),
                    arguments: item.arguments.unwrap_or_default(),
                };
                self.on_function_call(call);
            }
            ServerEvent::InputCommitted { .. }
            | ServerEvent::OutputItemDone { .. }
            | ServerEvent::ItemTruncated { .. } => {}
            ServerEvent::Other { kind } => debug!(%kind, "model event not used"),
        }
        Ok(())
    }

    /// The agent speaks first, once the session is confirmed (on outbound calls, once a
    /// person is known to be there or the wait is over).
    fn greet(&mut self) {
        if self.greeting_requested || self.machine != Machine::No {
            return;
        }
        if let Some(wait) = self.ctx.greeting_wait.take() {
            self.greeting_gate = Some(Instant::now() + wait);
            debug!(
                wait_ms = wait.as_millis() as u64,
                "greeting waits for a person"
            );
            return;
        }
        if self.greeting_gate.is_some() {
            return;
        }
        if let Some(greeting) = &self.settings.greeting {
            self.greeting_requested = true;
            self.protect_next_response = self.settings.greeting_protected;
            self.out.model.push(
                ClientEvent::ResponseCreate {
                    response: Some(ResponseParams {
                        instructions: Some(greeting.clone()),
                    }),
                }
                .to_json(),
            );
        }
    }

    /// A person is on the line (or the wait is over): greet now if the greeting waited.
    fn release_greeting(&mut self, why: &str) {
        self.ctx.greeting_wait = None;
        if self.greeting_gate.take().is_some() {
            debug!(why, "greeting released");
            if self.session_confirmed {
                self.greet();
            }
        }
    }

    /// The earliest instant the session must wake up for (besides the pacer).
    fn next_timer(&self) -> Option<Instant> {
        let mut at: Option<Instant> = self.greeting_gate;
        let mut consider = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if self.ending.is_none() {
            if let Some(t) = self.hard_stop {
                consider(t);
            }
            if let Some(d) = self.settings.silence_timeout {
                consider(self.last_activity + d);
            }
        }
        if let Machine::AwaitBeep(t) = self.machine {
            consider(t);
        }
        if let Some(e) = &self.ending {
            consider(e.deadline);
            if let Some(t) = e.spoken_until {
                consider(t);
            }
        }
        at
    }

    fn on_timer(&mut self) -> Result<(), EndReason> {
        let now = Instant::now();
        if self.ending.is_none() {
            if self.hard_stop.is_some_and(|t| t <= now) {
                info!("the agent's maximum call duration is reached");
                self.model_note(
                    "[system: the maximum call length is reached; say a short goodbye now]",
                );
                self.start_ending(
                    Then::Hangup(EndReason::AgentEnded("max call duration reached".into())),
                    true,
                );
            } else if let Some(d) = self.settings.silence_timeout
                && now >= self.last_activity + d
                && !self.playback.is_playing()
                && self.playback.active_response().is_none()
            {
                info!(silence_s = d.as_secs(), "nobody spoke: ending the call");
                return Err(EndReason::AgentEnded("silence timeout".into()));
            }
        }
        if self.greeting_gate.is_some_and(|t| t <= now) {
            self.release_greeting("no sign of a person yet; greeting anyway");
        }
        if let Machine::AwaitBeep(t) = self.machine
            && t <= now
        {
            self.leave_voicemail();
        }
        Ok(())
    }

    fn on_signal(&mut self, sig: Signal) -> Result<(), EndReason> {
        let Signal::AnsweredBy(by) = sig;
        info!(answered_by = %by, "answering machine detection");
        let machine = by.starts_with("machine") || by == "fax";
        if !machine {
            self.release_greeting("machine detection says a person answered");
            return Ok(());
        }
        if self.machine != Machine::No {
            return Ok(());
        }
        // Stop talking over the machine's greeting.
        if self.playback.is_playing() || self.playback.active_response().is_some() {
            let mut out = std::mem::take(&mut self.out);
            self.playback.barge_in(true, &mut out);
            self.out = out;
        }
        self.greeting_gate = None;
        self.ctx.greeting_wait = None;
        self.greeting_requested = true;
        if by == "machine_start" {
            self.machine = Machine::AwaitBeep(Instant::now() + BEEP_TIMEOUT);
            Ok(())
        } else {
            self.machine = Machine::AwaitBeep(Instant::now());
            self.leave_voicemail();
            Ok(())
        }
    }

    /// After the beep: leave the profile's message then hang up, or just hang up.
    fn leave_voicemail(&mut self) {
        if self.machine == Machine::Leaving {
            return;
        }
        self.machine = Machine::Leaving;
        match self.settings.tools.voicemail.clone() {
            Some(VoicemailPlan::LeaveMessage(message)) => {
                info!("leaving a voicemail message");
                self.request_response(Some(ResponseParams {
                    instructions: Some(format!(
                        "You reached a voicemail. Say exactly this message, then stop: {message}"
                    )),
                }));
                self.start_ending(
                    Then::Hangup(EndReason::Voicemail("message left".into())),
                    true,
                );
            }
            Some(VoicemailPlan::HangUp) | None => {
                info!("voicemail: hanging up without a message");
                self.start_ending(Then::Hangup(EndReason::Voicemail("hung up".into())), false);
            }
        }
    }

    fn start_ending(&mut self, then: Then, awaiting_response: bool) {
        self.ending = Some(Ending {
            then,
            deadline: Instant::now() + ENDING_TIMEOUT,
            awaiting_response,
            spoken_until: None,
        });
    }

    /// Whether the agent's words have finished playing to the caller.
    fn words_played(&mut self) -> bool {
        if self.playback.is_playing() || self.playback.active_response().is_some() {
            return false;
        }
        if self.ctx.transport == Transport::Sideband {
            // The carrier plays the audio; allow it to finish after the response.
            let e = match self.ending.as_mut() {
                Some(e) => e,
                None => return true,
            };
            let until = *e.spoken_until.get_or_insert_with(|| {
                self.last_response_done.unwrap_or_else(Instant::now) + SIDEBAND_TAIL
            });
            return Instant::now() >= until;
        }
        true
    }

    /// Ends or transfers the call once the agent's words have played.
    fn check_ending(&mut self) -> Result<(), EndReason> {
        let Some(e) = &self.ending else {
            return Ok(());
        };
        let timed_out = Instant::now() >= e.deadline;
        if let Then::AwaitStop(to) = &e.then {
            return if timed_out {
                Err(EndReason::Transferred(to.clone()))
            } else {
                Ok(())
            };
        }
        if e.awaiting_response && !timed_out {
            return Ok(());
        }
        if !timed_out && !self.words_played() {
            return Ok(());
        }
        let Some(e) = self.ending.take() else {
            return Ok(());
        };
        match e.then {
            Then::Hangup(reason) => Err(reason),
            Then::Transfer(target) => {
                match self.ctx.control.clone() {
                    Some(control) => {
                        let tx = self.tool_sender();
                        let to = target.to.clone();
                        tokio::spawn(async move {
                            let result = control.transfer(target.clone()).await;
                            let _ = tx.send(ToolDone::Transfer { target, result });
                        });
                        // Wait for the outcome (the next step handles it).
                        self.ending = Some(Ending {
                            then: Then::AwaitStop(to),
                            deadline: Instant::now() + ENDING_TIMEOUT,
                            awaiting_response: false,
                            spoken_until: None,
                        });
                    }
                    None => {
                        self.model_note(
                            "[system: the transfer is not possible on this call; apologise and offer to take a message]",
                        );
                    }
                }
                Ok(())
            }
            Then::AwaitStop(_) => Ok(()),
        }
    }

    /// Twilio stops the stream of a call it is transferring (the call update replaced the
    /// TwiML), possibly before the update request has even answered: that end is the transfer.
    fn transferred_stop(&mut self, reason: EndReason) -> EndReason {
        let Some(Ending {
            then: Then::AwaitStop(to),
            ..
        }) = &self.ending
        else {
            return reason;
        };
        match reason {
            EndReason::TwilioStop | EndReason::TwilioClosed(_) => {
                let to = to.clone();
                self.announce_transfer(&to);
                EndReason::Transferred(to)
            }
            // OpenAI closes the sideband as soon as the REFER is taken, possibly before the
            // `/refer` request has answered.
            EndReason::ModelClosed(_) if self.ctx.transport == Transport::Sideband => {
                let to = to.clone();
                self.announce_transfer(&to);
                EndReason::Transferred(to)
            }
            other => other,
        }
    }

    fn announce_transfer(&mut self, to: &str) {
        if self.transfer_announced {
            return;
        }
        self.transfer_announced = true;
        let warm = self
            .settings
            .tools
            .transfer
            .as_ref()
            .is_some_and(|t| t.warm);
        self.hub.publish(
            &self.call_id,
            CallEventKind::Transferred {
                to: to.to_owned(),
                warm,
            },
        );
    }

    /// The sender of tool results, creating the channel on first use.
    fn tool_sender(&mut self) -> mpsc::UnboundedSender<ToolDone> {
        if let Some(tx) = &self.tool_tx {
            return tx.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.tool_tx = Some(tx.clone());
        self.new_tool_rx = Some(rx);
        tx
    }

    /// Tell the model something as a user-side note and let it respond.
    fn model_note(&mut self, text: &str) {
        self.out.model.push(
            ClientEvent::ConversationItemCreate {
                item: Item::user_text(text),
            }
            .to_json(),
        );
        self.request_response(None);
    }

    /// Ask for a response now, or once the response in progress is done: the API refuses a
    /// second `response.create` while one is active (`conversation_already_has_active_response`),
    /// and a function call arrives before its response is done.
    fn request_response(&mut self, params: Option<ResponseParams>) {
        if self.playback.active_response().is_some() {
            // The latest request wins (e.g. a voicemail message replaces a plain go-on).
            if params.is_some() || self.queued_response.is_none() {
                self.queued_response = Some(params);
            }
            return;
        }
        self.out
            .model
            .push(ClientEvent::ResponseCreate { response: params }.to_json());
    }

    /// Send a function call's output, and (`respond`) let the model go on.
    fn tool_output(&mut self, call_id: &str, output: &serde_json::Value, respond: bool) {
        self.out.model.push(
            ClientEvent::ConversationItemCreate {
                item: Item::FunctionCallOutput {
                    call_id: call_id.to_owned(),
                    output: tools::output_text(output),
                },
            }
            .to_json(),
        );
        if respond {
            self.request_response(None);
        }
    }

    fn record_tool(&mut self, call: &FunctionCall, output: &serde_json::Value, ok: bool, ms: u64) {
        info!(tool = %call.name, ok, duration_ms = ms, "tool call");
        self.summary.tool_calls.push((call.name.clone(), ok));
        self.hub.publish(
            &self.call_id,
            CallEventKind::ToolCall {
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                output: tools::output_text(output),
                ok,
                duration_ms: ms,
            },
        );
    }

    /// The model asked for a tool.
    fn on_function_call(&mut self, call: FunctionCall) {
        use serde_json::json;
        let action = tools::decide(&self.settings.tools, &call);
        match action {
            Action::Reply { output, ok } => {
                self.record_tool(&call, &output, ok, 0);
                self.tool_output(&call.call_id, &output, true);
            }
            Action::End {
                output,
                reason,
                goodbye,
            } => {
                self.record_tool(&call, &output, true, 0);
                self.tool_output(&call.call_id, &output, goodbye);
                self.start_ending(Then::Hangup(EndReason::AgentEnded(reason)), goodbye);
            }
            Action::Transfer {
                output,
                target,
                reason,
            } => {
                info!(to = %target.to, warm = target.warm, %reason, "transfer requested");
                self.record_tool(&call, &output, true, 0);
                self.tool_output(&call.call_id, &output, false);
                self.start_ending(Then::Transfer(target), false);
            }
            Action::Voicemail { output } => {
                self.record_tool(&call, &output, true, 0);
                self.tool_output(&call.call_id, &output, false);
                self.hub.publish(
                    &self.call_id,
                    CallEventKind::AnsweredBy {
                        answered_by: "machine_detected_by_agent".into(),
                        source: "agent".into(),
                    },
                );
                if self.machine == Machine::No {
                    self.machine = Machine::AwaitBeep(Instant::now());
                    self.leave_voicemail();
                }
            }
            Action::SurveyAnswer { question, answer } => {
                let output = json!({"saved": true});
                self.record_tool(&call, &output, true, 0);
                self.hub.publish(
                    &self.call_id,
                    CallEventKind::SurveyAnswer { question, answer },
                );
                self.tool_output(&call.call_id, &output, true);
            }
            Action::OptOut { reason } => {
                let output = match &self.ctx.peer_number {
                    Some(number) => {
                        self.hub.publish(
                            &self.call_id,
                            CallEventKind::OptedOut {
                                number: number.clone(),
                            },
                        );
                        json!({"ok": true, "note": "the number will not be called again; confirm that and say goodbye"})
                    }
                    None => json!({"ok": true, "note": "noted; confirm and say goodbye"}),
                };
                self.record_tool(&call, &output, true, 0);
                self.tool_output(&call.call_id, &output, true);
                let why = reason.map_or_else(|| "opt_out".to_owned(), |r| format!("opt_out: {r}"));
                self.start_ending(Then::Hangup(EndReason::AgentEnded(why)), true);
            }
            Action::Http { tool, arguments } => {
                let client = self.ctx.http.clone().unwrap_or_default();
                let tx = self.tool_sender();
                tokio::spawn(async move {
                    let result = tools::run_http(&client, &tool, &arguments).await;
                    let _ = tx.send(ToolDone::Http { call, result });
                });
            }
        }
    }

    fn on_tool_done(&mut self, done: ToolDone) -> Result<(), EndReason> {
        match done {
            ToolDone::Http { call, result } => {
                let ms = result.duration.as_millis() as u64;
                self.record_tool(&call, &result.output, result.ok, ms);
                // Speak once the agent is not already speaking.
                self.tool_output(&call.call_id, &result.output, true);
            }
            ToolDone::Transfer { target, result } => match result {
                Ok(what) => {
                    info!(to = %target.to, %what, "call transferred");
                    self.announce_transfer(&target.to);
                    self.ending = Some(Ending {
                        then: Then::AwaitStop(target.to.clone()),
                        deadline: Instant::now() + TRANSFER_STOP_TIMEOUT,
                        awaiting_response: false,
                        spoken_until: None,
                    });
                    if self.ctx.transport == Transport::Sideband {
                        // The SIP leg was referred away: nothing more to wait for.
                        return Err(EndReason::Transferred(target.to));
                    }
                }
                Err(e) => {
                    warn!(to = %target.to, error = %e, "transfer failed");
                    self.ending = None;
                    self.hub.publish(
                        &self.call_id,
                        CallEventKind::Warning {
                            message: format!("transfer to {} failed: {e}", target.to),
                        },
                    );
                    self.model_note(
                        "[system: the transfer failed; apologise, and offer to take a message or help yourself]",
                    );
                }
            },
        }
        Ok(())
    }

    fn handle_notes(&mut self) {
        for note in std::mem::take(&mut self.out.notes) {
            match note {
                Note::FirstAudioPlayed { response_id } => {
                    if let Some((t0, idx)) = self.turn_of_response.remove(&response_id) {
                        let heard = t0.elapsed().as_millis() as u64;
                        if let Some(t) = self.summary.turns.get_mut(idx) {
                            t.heard_ms = Some(heard);
                            info!(model_ms = ?t.model_ms, heard_ms = heard, "turn latency");
                            self.hub.publish(
                                &self.call_id,
                                CallEventKind::Turn {
                                    model_ms: t.model_ms.unwrap_or(0),
                                    heard_ms: Some(heard),
                                },
                            );
                        }
                    }
                }
                Note::ProtectedPlayed { response_id } => {
                    debug!(%response_id, "protected greeting played whole");
                    // Restore the configured interruption behaviour.
                    let configured = self
                        .settings
                        .turn_detection
                        .as_ref()
                        .is_some_and(TurnDetection::interrupt_response);
                    if configured {
                        self.out
                            .model
                            .push(CallSettings::session_update(self.settings.session.clone()));
                    }
                }
                Note::BargeIn {
                    response_id,
                    truncated,
                    cancelled,
                    dropped_ms,
                } => {
                    self.summary.barge_ins += 1;
                    if let Some(r) = &response_id {
                        self.turn_of_response.remove(r);
                    }
                    info!(?response_id, ?truncated, cancelled, dropped_ms, "barge-in");
                    self.hub.publish(
                        &self.call_id,
                        CallEventKind::BargeIn {
                            truncated_ms: truncated.first().map(|t| t.1),
                            dropped_ms,
                        },
                    );
                }
                Note::BargeInIgnored { response_id } => {
                    self.summary.barge_ins_ignored += 1;
                    debug!(%response_id, "caller spoke over the protected greeting");
                }
                Note::UnknownMark { name } => debug!(%name, "unknown mark echo"),
            }
        }
    }

    /// Write what this step produced: Twilio frames in one flush, model
    /// events in one flush (or into the bounded buffer while connecting).
    async fn flush(&mut self, twilio: &mut Link) -> Result<(), EndReason> {
        if !self.out.twilio.is_empty() {
            for msg in self.out.twilio.drain(..) {
                if msg.starts_with(r#"{"event":"media""#) {
                    self.summary.frames_out += 1;
                }
                twilio
                    .feed(WsOut::Text(msg))
                    .await
                    .map_err(|e| EndReason::TwilioClosed(e.to_string()))?;
            }
            twilio
                .flush()
                .await
                .map_err(|e| EndReason::TwilioClosed(e.to_string()))?;
        }
        if self.out.model.is_empty() && (self.model.is_none() || self.pre_model.is_empty()) {
            return Ok(());
        }
        match self.model.as_mut() {
            None => {
                for msg in self.out.model.drain(..) {
                    if self.pre_model.len() >= self.pre_model_cap {
                        self.pre_model.pop_front();
                        self.summary.dropped_input_frames += 1;
                    }
                    self.pre_model.push_back(msg);
                }
            }
            Some(model) => {
                let backlog = std::mem::take(&mut self.pre_model);
                for msg in backlog.into_iter().chain(self.out.model.drain(..)) {
                    model
                        .feed(WsOut::Text(msg))
                        .await
                        .map_err(|e| EndReason::ModelClosed(e.to_string()))?;
                }
                model
                    .flush()
                    .await
                    .map_err(|e| EndReason::ModelClosed(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Close both sockets and report.
    async fn finish(mut self, reason: EndReason, mut twilio: Link) -> CallSummary {
        match &reason {
            EndReason::TwilioStop | EndReason::TwilioClosed(_) => {
                info!(%reason, "call ended by Twilio");
            }
            other => warn!(reason = %other, "call ended"),
        }
        // Close the model socket promptly (well within 1 s): a polite close
        // frame, then drop it whatever the peer does.
        if let Some(mut model) = self.model.take() {
            let _ = tokio::time::timeout(CLOSE_GRACE, async {
                let _ = model
                    .send(WsOut::Close(CLOSE_NORMAL, "call ended".into()))
                    .await;
            })
            .await;
        }
        // If the model side ended the call, end the Twilio stream too: the
        // TwiML then continues (and hangs up).
        let twilio_close = match &reason {
            // Complete the closing handshake after `stop`.
            EndReason::TwilioStop => Some((CLOSE_NORMAL, "stream stopped".to_owned())),
            EndReason::TwilioClosed(_) => None,
            EndReason::TwilioFrameTooBig => Some((CLOSE_TOO_BIG, "frame too big".to_owned())),
            EndReason::ModelClosed(_) => Some((CLOSE_NORMAL, "model disconnected".to_owned())),
            EndReason::ModelConnectFailed(_) | EndReason::FormatMismatch(_) => {
                Some((CLOSE_ERROR, truncate_reason(&reason.to_string())))
            }
            EndReason::AgentEnded(_) | EndReason::Voicemail(_) => {
                Some((CLOSE_NORMAL, "call ended by the agent".to_owned()))
            }
            EndReason::Transferred(_) => Some((CLOSE_NORMAL, "call transferred".to_owned())),
        };
        // The agent hung up: end the call at the carrier too (on Media Streams closing the
        // stream would also end a call whose TwiML has nothing after <Connect>).
        if matches!(reason, EndReason::AgentEnded(_) | EndReason::Voicemail(_))
            && let Some(control) = self.ctx.control.clone()
        {
            tokio::spawn(async move {
                if let Err(e) = control.hangup().await {
                    warn!(error = %e, "hang-up request failed");
                }
            });
        }
        if let Some((code, why)) = twilio_close {
            let _ = tokio::time::timeout(CLOSE_GRACE, twilio.send(WsOut::Close(code, why))).await;
        }
        self.summary.silence_filled_ms = self.uplink.silence_filled_ms;
        self.hub.publish(
            &self.call_id,
            CallEventKind::Ended {
                reason: reason.to_string(),
            },
        );
        let _ = &self.stream_sid;
        self.summary.end_reason = Some(reason);
        self.summary
    }
}

/// WebSocket close reasons are limited to 123 bytes.
fn truncate_reason(s: &str) -> String {
    let mut end = s.len().min(120);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
