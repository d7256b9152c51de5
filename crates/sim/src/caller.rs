//! An emulated Twilio phone call: the voice webhook, the TwiML, and the
//! bidirectional Media Stream (`<Connect><Stream>`), as Twilio does them.
//!
//! [`run_call`] plays a [`CallerStep`] script against a voxbridge server:
//!
//! 1. POSTs the voice webhook (form fields as Twilio sends them, signed with
//!    `X-Twilio-Signature` over `public_url` + the webhook's path),
//! 2. parses the `<Connect><Stream url=..><Parameter ../></Stream></Connect>`
//!    TwiML,
//! 3. opens the media WebSocket (signed over the `wss://` stream URL with no
//!    params), sends `connected`, `start`, then one 160-byte µ-law `media`
//!    frame every 20 ms, `dtmf` and finally `stop` + close 1000,
//! 4. plays the agent's audio out in real time like Twilio (8 bytes/ms from
//!    arrival), echoes `mark`s when the audio queued before them has played,
//!    and handles `clear` (drop queued audio, echo all pending marks at once).
//!
//! Everything observed is returned in a [`CallerReport`].
//!
//! # Timing model
//!
//! "Stream start" (t = 0) is the instant the `start` message is sent. The
//! media frame with `chunk` = n is due at t = 20·n ms and carries
//! `timestamp` = 20·n (so `chunk` 1 / `timestamp` 20 is the first frame,
//! matching Twilio's documented example of chunk "2" at timestamp "40").
//! Ticks use [`MissedTickBehavior::Delay`]: a late tick is not caught up with a
//! burst of frames. With `omit_silence`, silent frames are not sent but
//! `chunk`/`timestamp` still advance, so gaps appear in both.
//!
//! Playout is computed in samples (8 per ms) from a virtual play head and
//! advanced lazily on every tick and every received message, so mark echoes
//! are at most one tick (20 ms) late.
//!
//! # Bursts and underruns
//!
//! A *burst* is a stretch of agent audio. It starts when queued audio begins
//! to play while no burst is open. It ends when (a) the queue has been empty
//! of audio for more than [`BURST_GAP_MS`], (b) a mark whose name starts with
//! [`DONE_MARK_PREFIX`] is reached by playout (or echoed by a `clear`), or
//! (c) a `clear` arrives. An *underrun* is counted when, inside an open burst,
//! the audio queue ran dry at time `d` and the next `media` arrived at a time
//! `a > d` (sample precision, no tolerance): that frame arrived after its play
//! deadline. Audio that arrives after the burst ended starts a new burst and
//! is not an underrun.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::stamp::{RxStamp, StampedTcp};
use voxbridge_audio::{FRAME_BYTES, MULAW_SILENCE, mulaw_encode};

/// A burst of agent audio ends after the queue has been dry for longer than this.
pub const BURST_GAP_MS: u64 = 200;
/// A mark whose name starts with this ends the current burst when it is reached.
pub const DONE_MARK_PREFIX: &str = "done:";
/// Frame period of a Twilio media stream.
const FRAME_MS: u64 = 20;
/// A tick served later than this is counted in [`CallerReport::late_ticks`].
pub const LATE_TICK_MS: u64 = 5;
/// µ-law samples (bytes) per millisecond.
const SPMS: u64 = 8;
/// Largest HTTP response accepted from the voice webhook.
const MAX_HTTP_RESPONSE: u64 = 1 << 20;
/// Time allowed for the webhook request, the WebSocket handshake and the close handshake.
const NET_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the emulated caller does once the media stream is up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallerStep {
    /// Voiced, speech-like audio (harmonics of a 150-250 Hz voice with a
    /// syllable envelope, frame RMS ≈ 3000-6500) for `ms` (rounded up to 20 ms).
    Speak { ms: u32 },
    /// Low-level line noise around µ-law silence (RMS < 10), or no frames at
    /// all with `omit_silence`.
    Silence { ms: u32 },
    /// Send silence until agent audio has started playing (or `timeout_ms`).
    WaitAgentSpeaking { timeout_ms: u32 },
    /// Send silence until no agent audio has played for `quiet_ms`, counted
    /// from the later of the end of the last agent audio and the start of
    /// this step (or `timeout_ms`).
    WaitAgentQuiet { quiet_ms: u32, timeout_ms: u32 },
    /// Send a `dtmf` event (no media time passes).
    Dtmf { digit: char },
    /// Send `stop` and close the socket with 1000. The end of the script does the same.
    Hangup,
}

/// Live progress, for `voxbridge demo`. `at_ms` is ms since stream start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallerEvent {
    /// The TwiML the voice webhook returned.
    Twiml(String),
    /// The media WebSocket is open (before `connected`/`start` are sent).
    Connected,
    /// A burst of agent audio started playing.
    AgentAudioStarted { at_ms: u64 },
    /// A burst of agent audio ended (`at_ms` = when its last audio finished, or the clear).
    AgentAudioStopped { at_ms: u64 },
    /// The server sent `clear`.
    Cleared { at_ms: u64 },
    /// A mark was echoed back to the server.
    MarkEchoed { name: String },
    /// The caller started speaking for `ms`.
    Spoke { at_ms: u64, ms: u32 },
    /// The caller pressed a key.
    Dtmf { digit: char },
    /// The call is over; the close frame the server sent, if any.
    Closed { code: Option<u16>, reason: String },
}

/// Configuration of one emulated call.
#[derive(Clone, Debug)]
pub struct CallerConfig {
    /// Where to POST the voice webhook, e.g. `http://127.0.0.1:PORT/twilio/voice` (plain http only).
    pub voice_url: String,
    /// The PUBLIC_URL the server believes it has, e.g. `https://voice.example.com`.
    /// The webhook is signed over `public_url` + the path and query of `voice_url`.
    pub public_url: String,
    /// When set, sign the webhook POST and the media WebSocket upgrade.
    pub auth_token: Option<String>,
    /// e.g. `ws://127.0.0.1:PORT`: connect here instead of the TwiML's `wss://host`
    /// (the TwiML's path is kept; the signature is still over the TwiML URL).
    pub connect_base: Option<String>,
    pub account_sid: String,
    pub call_sid: String,
    pub from: String,
    pub to: String,
    /// `inbound` (default), `outbound-api`, `outbound-dial`.
    pub direction: String,
    pub script: Vec<CallerStep>,
    /// Like a phone leg that omits silent audio: do not send silence frames.
    pub omit_silence: bool,
    /// Live progress events.
    pub events: Option<UnboundedSender<CallerEvent>>,
    /// TwiML already obtained (e.g. the `Twiml` parameter of an outbound call):
    /// when set, the voice webhook is not requested and this is parsed instead.
    pub twiml: Option<String>,
    /// External hang-up (e.g. the REST API ended the call): once it holds `true`
    /// the caller sends `stop` and closes the media socket with 1000 (reported as
    /// [`CallEnd::Hangup`]).
    pub hangup: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for CallerConfig {
    fn default() -> Self {
        Self {
            voice_url: String::new(),
            public_url: String::new(),
            auth_token: None,
            connect_base: None,
            account_sid: format!("AC{}", "0".repeat(32)),
            call_sid: random_sid("CA"),
            from: "+15005550006".into(),
            to: "+15005550001".into(),
            direction: "inbound".into(),
            script: Vec::new(),
            omit_silence: false,
            events: None,
            twiml: None,
            hangup: None,
        }
    }
}

impl CallerConfig {
    /// A config with defaults (random `CallSid`, inbound, empty script).
    pub fn new(voice_url: impl Into<String>, public_url: impl Into<String>) -> Self {
        Self {
            voice_url: voice_url.into(),
            public_url: public_url.into(),
            ..Self::default()
        }
    }

    fn emit(&self, ev: CallerEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(ev);
        }
    }

    /// Upper bound on the media session: every step's duration or timeout, plus 10 s.
    pub fn script_budget(&self) -> Duration {
        let ms: u64 = self
            .script
            .iter()
            .map(|s| match *s {
                CallerStep::Speak { ms } | CallerStep::Silence { ms } => u64::from(ms) + FRAME_MS,
                CallerStep::WaitAgentSpeaking { timeout_ms } => u64::from(timeout_ms) + FRAME_MS,
                CallerStep::WaitAgentQuiet { timeout_ms, .. } => u64::from(timeout_ms) + FRAME_MS,
                CallerStep::Dtmf { .. } | CallerStep::Hangup => 0,
            })
            .sum();
        Duration::from_millis(ms + 10_000)
    }
}

/// Options of [`run_call_with`] that [`run_call`] leaves at their defaults.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Record `sent_payloads` and `heard` (≈ 20 KB/s per call). Default true;
    /// a load generator may turn it off (counters are still kept).
    pub record_audio: bool,
    /// Hard limit on the media session; default [`CallerConfig::script_budget`].
    pub safety_timeout: Option<Duration>,
    /// Keep the per-message logs `received_frames`, `marks_received` and
    /// `marks_echoed` (default true; counters are kept either way).
    pub keep_log: bool,
    /// Load test: write an uplink tag (this call index, the frame sequence,
    /// the send time; see [`crate::realtime::probe`]) at the start of every
    /// media frame sent, and measure downlink tags in the frames received
    /// (`downlink_latency_us`).
    pub tag_call: Option<u32>,
    /// Take a frame's arrival time from the kernel's receive timestamp of its bytes
    /// (see [`crate::stamp`]) instead of the time this caller got to it: for the
    /// downlink latency and the playback deadline. Plain `ws://` only. Default false.
    pub kernel_rx_stamps: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            record_audio: true,
            safety_timeout: None,
            keep_log: true,
            tag_call: None,
            kernel_rx_stamps: false,
        }
    }
}

/// One `media` message received from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// ms since stream start.
    pub at_ms: u64,
    /// Decoded payload length in bytes (8 per ms).
    pub len: usize,
}

/// Why the media session ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallEnd {
    /// The caller hung up (a `Hangup` step or the end of the script).
    Hangup,
    /// The server sent a close frame.
    ServerClosed,
    /// The connection dropped without a close frame (or a socket error).
    Disconnected(String),
    /// The safety timeout elapsed; `stop` and a close were sent.
    Timeout,
}

/// Everything the emulated caller observed.
#[derive(Clone, Debug)]
pub struct CallerReport {
    pub twiml: String,
    /// The `<Stream url>` as given in the TwiML.
    pub stream_url: String,
    /// The `<Parameter>`s, unescaped, in document order.
    pub custom_parameters: Vec<(String, String)>,
    pub stream_sid: String,
    pub call_sid: String,
    /// `media` messages sent (omitted silence is not counted).
    pub frames_sent: u64,
    /// (timestamp ms, base64 payload) of every `media` sent, in order (empty if not recorded).
    pub sent_payloads: Vec<(u64, String)>,
    pub received_frames: Vec<ReceivedFrame>,
    /// The agent audio actually played (cleared audio excluded), in order (empty if not recorded).
    pub heard: Vec<u8>,
    /// Bytes of agent audio played (kept even when `heard` is not recorded).
    pub heard_bytes: u64,
    pub marks_received: Vec<String>,
    pub marks_echoed: Vec<String>,
    /// at_ms of each `clear`.
    pub clears: Vec<u64>,
    /// The most agent audio ever queued and not yet played, in ms.
    pub max_buffered_ms: u64,
    /// See the module docs: media that arrived after the queue ran dry inside a burst.
    pub underruns: u64,
    /// Bursts of agent audio (see the module docs).
    pub bursts: u64,
    /// `WaitAgentSpeaking` / `WaitAgentQuiet` steps that ended by their timeout.
    pub wait_timeouts: u64,
    /// The close frame the server sent (its own or the echo of ours), if any.
    pub close: Option<(u16, String)>,
    pub end: CallEnd,
    /// Anything the server sent that Twilio would reject or ignore.
    pub protocol_errors: Vec<String>,
    /// When `start` was sent (stream start, t = 0).
    pub started_at: Option<std::time::Instant>,
    /// `media` messages received (kept even when `received_frames` is not).
    pub received_count: u64,
    /// Decoded agent audio bytes received in `media` messages.
    pub received_bytes: u64,
    /// `mark`s echoed (kept even when `marks_echoed` is not).
    pub marks_echoed_count: u64,
    /// With [`RunOptions::tag_call`]: per received frame carrying a downlink
    /// tag, now − its send time, in µs.
    pub downlink_latency_us: Vec<u32>,
    /// 20 ms ticks this caller served more than [`LATE_TICK_MS`] after their time:
    /// its process fell behind, and its frames reach the server in bunches.
    pub late_ticks: u64,
    /// The latest a tick was served after its time, µs.
    pub max_tick_lag_us: u64,
}

/// Errors before the media session is up. Problems after that are recorded in the report.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    #[error("bad caller config: {0}")]
    Config(String),
    #[error("voice webhook request failed: {0}")]
    Http(String),
    #[error("voice webhook returned HTTP {status}: {body}")]
    HttpStatus { status: u16, body: String },
    #[error("bad TwiML: {0}")]
    Twiml(String),
    #[error("media WebSocket rejected with HTTP {status}")]
    WsRejected { status: u16 },
    #[error("media WebSocket connect failed: {0}")]
    WsConnect(String),
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

// ---------------------------------------------------------------------------
// Messages

fn js(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Twilio's `start` message (sequenceNumber "1").
pub fn start_message(
    stream_sid: &str,
    account_sid: &str,
    call_sid: &str,
    params: &[(String, String)],
) -> String {
    let custom: Vec<String> = params
        .iter()
        .map(|(k, v)| format!("{}:{}", js(k), js(v)))
        .collect();
    format!(
        concat!(
            r#"{{"event":"start","sequenceNumber":"1","start":{{"accountSid":{a},"streamSid":{s},"callSid":{c},"#,
            r#""tracks":["inbound"],"mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}},"#,
            r#""customParameters":{{{p}}}}},"streamSid":{s}}}"#
        ),
        a = js(account_sid),
        s = js(stream_sid),
        c = js(call_sid),
        p = custom.join(",")
    )
}

/// Twilio's inbound `media` message; the numbers are sent as strings.
pub fn media_message(
    seq: u64,
    stream_sid: &str,
    chunk: u64,
    timestamp_ms: u64,
    payload_b64: &str,
) -> String {
    format!(
        r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{timestamp_ms}","payload":{}}},"streamSid":{}}}"#,
        js(payload_b64),
        js(stream_sid)
    )
}

/// [`media_message`] for raw audio: one allocation, byte-identical output.
pub fn media_message_bytes(
    seq: u64,
    stream_sid: &str,
    chunk: u64,
    timestamp_ms: u64,
    audio: &[u8],
) -> String {
    use std::fmt::Write as _;
    let plain_sid = stream_sid
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut s = String::with_capacity(audio.len().div_ceil(3) * 4 + stream_sid.len() + 128);
    let _ = write!(
        s,
        r#"{{"event":"media","sequenceNumber":"{seq}","media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{timestamp_ms}","payload":""#
    );
    B64.encode_string(audio, &mut s);
    s.push_str(r#""},"streamSid":"#);
    if plain_sid {
        s.push('"');
        s.push_str(stream_sid);
        s.push('"');
    } else {
        s.push_str(&js(stream_sid));
    }
    s.push('}');
    s
}

/// Twilio's `dtmf` message.
pub fn dtmf_message(seq: u64, stream_sid: &str, digit: char) -> String {
    format!(
        r#"{{"event":"dtmf","streamSid":{},"sequenceNumber":"{seq}","dtmf":{{"track":"inbound_track","digit":{}}}}}"#,
        js(stream_sid),
        js(&digit.to_string())
    )
}

/// Twilio's echo of a mark.
pub fn mark_message(seq: u64, stream_sid: &str, name: &str) -> String {
    format!(
        r#"{{"event":"mark","sequenceNumber":"{seq}","streamSid":{},"mark":{{"name":{}}}}}"#,
        js(stream_sid),
        js(name)
    )
}

/// Twilio's `stop` message.
pub fn stop_message(seq: u64, stream_sid: &str, account_sid: &str, call_sid: &str) -> String {
    format!(
        r#"{{"event":"stop","sequenceNumber":"{seq}","streamSid":{},"stop":{{"accountSid":{},"callSid":{}}}}}"#,
        js(stream_sid),
        js(account_sid),
        js(call_sid)
    )
}

/// The first message on the socket.
pub const CONNECTED_MESSAGE: &str = r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#;

/// `X-Twilio-Signature` of the media WebSocket upgrade: the `wss://` stream URL, no params.
pub fn media_signature(auth_token: &str, stream_url: &str) -> String {
    voxbridge_twilio::signature::compute_signature(auth_token, stream_url, &[])
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

// ---------------------------------------------------------------------------
// Audio sources (precomputed once, shared by every call)

/// 2.4 s of speech-like µ-law: ten 240 ms syllables, f0 150-250 Hz, four
/// harmonics, envelope 0.5..1, peak amplitude ≤ 16000.
fn speech_clip() -> &'static [u8] {
    static CLIP: OnceLock<Vec<u8>> = OnceLock::new();
    CLIP.get_or_init(|| {
        const SYL: usize = 240 * 8;
        let bases = [
            180.0, 215.0, 160.0, 235.0, 195.0, 170.0, 225.0, 150.0, 205.0, 185.0,
        ];
        let mut out = Vec::with_capacity(SYL * bases.len());
        let mut phase = 0.0f64;
        for (i, f_base) in bases.iter().enumerate() {
            let glide = if i % 2 == 0 { 15.0 } else { -15.0 };
            for n in 0..SYL {
                let pos = n as f64 / SYL as f64;
                let f0: f64 = f_base + glide * pos;
                phase += std::f64::consts::TAU * f0 / 8000.0;
                let env = 0.5 + 0.5 * (std::f64::consts::PI * pos).sin();
                let v = phase.sin()
                    + 0.5 * (2.0 * phase).sin()
                    + 0.3 * (3.0 * phase).sin()
                    + 0.2 * (4.0 * phase).sin();
                let s = (8000.0 * env * v).clamp(-32000.0, 32000.0) as i16;
                out.push(mulaw_encode(s));
            }
        }
        out
    })
}

/// 1 s of low-level line noise (|s| ≤ 6), i.e. 0xFF-ish µ-law.
fn noise_clip() -> &'static [u8] {
    static CLIP: OnceLock<Vec<u8>> = OnceLock::new();
    CLIP.get_or_init(|| {
        let mut x: u32 = 0x9E37_79B9;
        (0..8000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let s = (x % 13) as i16 - 6;
                if s == 0 {
                    MULAW_SILENCE
                } else {
                    mulaw_encode(s)
                }
            })
            .collect()
    })
}

fn clip_frame(clip: &[u8], pos: &mut usize) -> [u8; FRAME_BYTES] {
    let mut f = [MULAW_SILENCE; FRAME_BYTES];
    for b in f.iter_mut() {
        if *pos >= clip.len() {
            *pos = 0;
        }
        *b = clip[*pos];
        *pos += 1;
    }
    f
}

// ---------------------------------------------------------------------------
// Voice webhook + TwiML

/// POST the voice webhook and parse the TwiML: (twiml, stream url, `<Parameter>`s).
pub async fn fetch_twiml(
    cfg: &CallerConfig,
) -> Result<(String, String, Vec<(String, String)>), CallerError> {
    let url = url::Url::parse(&cfg.voice_url)
        .map_err(|e| CallerError::Config(format!("voice_url: {e}")))?;
    let path_query = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let params = webhook_params(cfg);
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    let mut headers = Vec::new();
    if let Some(token) = &cfg.auth_token {
        let signed_url = format!("{}{}", cfg.public_url.trim_end_matches('/'), path_query);
        let mut sorted = params.clone();
        sorted.sort();
        let sig = voxbridge_twilio::signature::compute_signature(token, &signed_url, &sorted);
        headers.push(("X-Twilio-Signature".to_string(), sig));
    }
    let (status, resp) = tokio::time::timeout(NET_TIMEOUT, http_post_form(&url, &headers, &body))
        .await
        .map_err(|_| CallerError::Timeout("voice webhook"))??;
    if status != 200 {
        return Err(CallerError::HttpStatus { status, body: resp });
    }
    let (stream_url, params) = parse_connect_stream(&resp)?;
    Ok((resp, stream_url, params))
}

/// The form fields of Twilio's voice webhook for a ringing call.
pub fn webhook_params(cfg: &CallerConfig) -> Vec<(String, String)> {
    let mut p: Vec<(String, String)> = vec![
        ("AccountSid".into(), cfg.account_sid.clone()),
        ("ApiVersion".into(), "2010-04-01".into()),
        ("CallSid".into(), cfg.call_sid.clone()),
        ("CallStatus".into(), "ringing".into()),
        ("Called".into(), cfg.to.clone()),
        ("Caller".into(), cfg.from.clone()),
        ("Direction".into(), cfg.direction.clone()),
        ("From".into(), cfg.from.clone()),
        ("To".into(), cfg.to.clone()),
    ];
    if cfg.from.starts_with("+1") {
        p.push(("CallerCountry".into(), "US".into()));
        p.push(("FromCountry".into(), "US".into()));
    }
    if cfg.to.starts_with("+1") {
        p.push(("CalledCountry".into(), "US".into()));
        p.push(("ToCountry".into(), "US".into()));
    }
    p
}

async fn http_post_form(
    url: &url::Url,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, String), CallerError> {
    http_request("POST", url, headers, body).await
}

/// A minimal HTTP/1.1 client (plain `http://` only): sends `method` with a
/// form-encoded `body` (no body and no Content-Type when `body` is empty and the
/// method is GET) and returns (status, body).
pub(crate) async fn http_request(
    method: &str,
    url: &url::Url,
    headers: &[(String, String)],
    body: &str,
) -> Result<(u16, String), CallerError> {
    if url.scheme() != "http" {
        return Err(CallerError::Config(format!(
            "URL must be http:// (got {})",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| CallerError::Config("voice_url has no host".into()))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let host_port = format!("{host}:{port}");
    let mut stream = TcpStream::connect(&host_port)
        .await
        .map_err(|e| CallerError::Http(format!("connect {host_port}: {e}")))?;
    let target = &url[url::Position::BeforePath..url::Position::AfterQuery];
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {host_port}\r\nUser-Agent: TwilioProxy/1.1\r\nAccept: */*\r\nConnection: close\r\n"
    );
    if method != "GET" || !body.is_empty() {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let io = |e: std::io::Error| CallerError::Http(e.to_string());
    stream.write_all(req.as_bytes()).await.map_err(io)?;
    stream.flush().await.map_err(io)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_HTTP_RESPONSE)
        .read_to_end(&mut raw)
        .await
        .map_err(io)?;
    parse_http_response(&raw)
}

fn parse_http_response(raw: &[u8]) -> Result<(u16, String), CallerError> {
    let bad = |m: &str| CallerError::Http(format!("bad HTTP response: {m}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| bad("non-UTF-8 headers"))?;
    let mut body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split(' ');
    if !parts.next().unwrap_or_default().starts_with("HTTP/1.") {
        return Err(bad("status line"));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status code"))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim(), v.trim());
        if k.eq_ignore_ascii_case("content-length") {
            content_length = v.parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding")
            && v.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let decoded;
    if chunked {
        decoded = dechunk(body).ok_or_else(|| bad("chunked body"))?;
        body = &decoded;
    } else if let Some(n) = content_length {
        body = body
            .get(..n)
            .ok_or_else(|| bad("body shorter than Content-Length"))?;
    }
    Ok((status, String::from_utf8_lossy(body).into_owned()))
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size_str = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// Parse `<Response>…<Connect><Stream url="…"><Parameter name="…" value="…"/>…</Stream></Connect>…</Response>`:
/// returns the (unescaped) stream URL and parameters. Twilio's own rules are
/// enforced: the URL must be `wss://` without a query string (errors 31922, 31920).
pub fn parse_connect_stream(twiml: &str) -> Result<(String, Vec<(String, String)>), CallerError> {
    let err = |m: &str| CallerError::Twiml(m.to_string());
    let mut rest = twiml;
    let mut seen_response = false;
    let mut in_connect = false;
    let mut in_stream = false;
    let mut url: Option<String> = None;
    let mut params = Vec::new();
    while let Some(lt) = rest.find('<') {
        rest = &rest[lt..];
        let skip_to = |r: &str, end: &str| r.find(end).map(|i| i + end.len());
        let special = if rest.starts_with("<!--") {
            Some("-->")
        } else if rest.starts_with("<![CDATA[") {
            Some("]]>")
        } else if rest.starts_with("<?") {
            Some("?>")
        } else if rest.starts_with("<!") {
            Some(">")
        } else {
            None
        };
        if let Some(end) = special {
            let n = skip_to(rest, end).ok_or_else(|| err("unterminated markup"))?;
            rest = &rest[n..];
            continue;
        }
        // find the closing '>' outside quotes
        let mut quote = None;
        let mut end = None;
        for (i, c) in rest.char_indices().skip(1) {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '>') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.ok_or_else(|| err("unterminated tag"))?;
        let tag = &rest[1..end];
        rest = &rest[end + 1..];
        if let Some(name) = tag.strip_prefix('/') {
            match name.trim() {
                "Stream" if in_stream => break,
                "Connect" => in_connect = false,
                _ => {}
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let tag = tag.strip_suffix('/').unwrap_or(tag);
        let (name, attrs) = parse_tag(tag).ok_or_else(|| err("malformed tag"))?;
        if !seen_response {
            if name != "Response" {
                return Err(err("root element is not <Response>"));
            }
            seen_response = true;
            continue;
        }
        let attr = |k: &str| attrs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        match name {
            "Connect" if !self_closing => in_connect = true,
            "Stream" if in_connect => {
                url = Some(attr("url").ok_or_else(|| err("<Stream> without url"))?);
                if self_closing {
                    break;
                }
                in_stream = true;
            }
            "Parameter" if in_stream => {
                let n = attr("name").ok_or_else(|| err("<Parameter> without name"))?;
                params.push((n, attr("value").unwrap_or_default()));
            }
            _ => {}
        }
    }
    let url = url.ok_or_else(|| err("no <Connect><Stream url=…>"))?;
    if !url.starts_with("wss://") {
        return Err(err(&format!(
            "<Stream url> must be wss:// (Twilio error 31922): {url}"
        )));
    }
    if url.contains('?') {
        return Err(err(&format!(
            "<Stream url> must not have a query string (Twilio error 31920): {url}"
        )));
    }
    Ok((url, params))
}

/// `Name a="x" b='y'` → ("Name", [(a, x), (b, y)]), values unescaped.
fn parse_tag(tag: &str) -> Option<(&str, Vec<(String, String)>)> {
    let tag = tag.trim();
    let name_end = tag.find(|c: char| c.is_whitespace()).unwrap_or(tag.len());
    let name = &tag[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = tag[name_end..].trim_start();
    let mut attrs = Vec::new();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        rest = rest[eq + 1..].trim_start();
        let q = rest.chars().next()?;
        if q != '"' && q != '\'' {
            return None;
        }
        let close = rest[1..].find(q)? + 1;
        attrs.push((key.to_string(), xml_unescape(&rest[1..close])));
        rest = rest[close + 1..].trim_start();
    }
    Some((name, attrs))
}

/// Unescape the five XML entities and numeric character references.
pub fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        let Some(semi) = rest.find(';').filter(|&i| i <= 10) else {
            out.push('&');
            rest = &rest[1..];
            continue;
        };
        let ent = &rest[1..semi];
        let ch = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .or_else(|| ent.strip_prefix("#X"))
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| ent.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match ch {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

// ---------------------------------------------------------------------------
// The call

/// Run a whole call: webhook, TwiML, media stream, script, hangup.
pub async fn run_call(cfg: CallerConfig) -> Result<CallerReport, CallerError> {
    run_call_with(cfg, RunOptions::default()).await
}

/// [`run_call`] with [`RunOptions`].
pub async fn run_call_with(
    cfg: CallerConfig,
    opts: RunOptions,
) -> Result<CallerReport, CallerError> {
    let (twiml, stream_url, params) = match &cfg.twiml {
        Some(t) => {
            let (u, p) = parse_connect_stream(t)?;
            (t.clone(), u, p)
        }
        None => fetch_twiml(&cfg).await?,
    };
    cfg.emit(CallerEvent::Twiml(twiml.clone()));
    let connect_url = match &cfg.connect_base {
        Some(base) => {
            let u = url::Url::parse(&stream_url)
                .map_err(|e| CallerError::Twiml(format!("stream url: {e}")))?;
            format!(
                "{}{}",
                base.trim_end_matches('/'),
                &u[url::Position::BeforePath..url::Position::AfterQuery]
            )
        }
        None => stream_url.clone(),
    };
    let mut req = connect_url
        .as_str()
        .into_client_request()
        .map_err(|e| CallerError::WsConnect(format!("{connect_url}: {e}")))?;
    req.headers_mut()
        .insert("User-Agent", HeaderValue::from_static("Twilio.TmeWs/1.0"));
    if let Some(token) = &cfg.auth_token {
        let sig = media_signature(token, &stream_url);
        let v = HeaderValue::from_str(&sig).map_err(|e| CallerError::WsConnect(e.to_string()))?;
        req.headers_mut().insert("X-Twilio-Signature", v);
    }
    if req.uri().scheme_str() == Some("ws") {
        let ws = handshake(connect_plain(req, opts.kernel_rx_stamps)).await?;
        Ok(drive(cfg, &opts, ws, twiml, stream_url, params).await)
    } else {
        // TCP_NODELAY, as a media gateway would: with Nagle, a frame sent
        // right after a small mark echo waits for the server's delayed ACK.
        let connect =
            tokio_tungstenite::connect_async_with_config(req, Some(crate::ws_config()), true);
        let (ws, _resp) = handshake(connect).await?;
        Ok(drive(cfg, &opts, ws, twiml, stream_url, params).await)
    }
}

/// A `ws://` media socket on a [`StampedTcp`] (TCP_NODELAY, as with `wss://`).
async fn connect_plain(
    req: tungstenite::handshake::client::Request,
    stamps: bool,
) -> Result<WebSocketStream<StampedTcp>, tungstenite::Error> {
    let host = req.uri().host().unwrap_or_default().to_string();
    let port = req.uri().port_u16().unwrap_or(80);
    let tcp = TcpStream::connect((host.trim_matches(['[', ']']), port)).await?;
    tcp.set_nodelay(true)?;
    let tcp = StampedTcp::new(tcp, stamps);
    let (ws, _resp) =
        tokio_tungstenite::client_async_with_config(req, tcp, Some(crate::ws_config())).await?;
    Ok(ws)
}

/// The WebSocket handshake, bounded by [`NET_TIMEOUT`], with its errors as the caller's.
async fn handshake<T>(
    connect: impl std::future::Future<Output = Result<T, tungstenite::Error>>,
) -> Result<T, CallerError> {
    match tokio::time::timeout(NET_TIMEOUT, connect).await {
        Err(_) => Err(CallerError::Timeout("media WebSocket handshake")),
        Ok(Err(tungstenite::Error::Http(resp))) => Err(CallerError::WsRejected {
            status: resp.status().as_u16(),
        }),
        Ok(Err(e)) => Err(CallerError::WsConnect(e.to_string())),
        Ok(Ok(x)) => Ok(x),
    }
}

/// The media session on an open socket, to its end.
async fn drive<S: CallerIo>(
    cfg: CallerConfig,
    opts: &RunOptions,
    mut ws: WebSocketStream<S>,
    twiml: String,
    stream_url: String,
    params: Vec<(String, String)>,
) -> CallerReport {
    cfg.emit(CallerEvent::Connected);

    let stream_sid = random_sid("MZ");
    let mut s = Session::new(&cfg, opts, stream_sid, Instant::now());
    s.report.twiml = twiml;
    s.report.stream_url = stream_url;
    s.report.custom_parameters = params;

    let budget = opts.safety_timeout.unwrap_or_else(|| cfg.script_budget());
    let end = match tokio::time::timeout(budget, s.run(&mut ws)).await {
        Ok(end) => end,
        Err(_) => {
            // Hang up politely; whatever the server does next is bounded by CLOSE_TIMEOUT.
            if !s.stopped {
                s.push_stop();
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.hangup(&mut ws)).await;
            CallEnd::Timeout
        }
    };
    s.report.end = end;
    s.finish();
    let (code, reason) = match &s.report.close {
        Some((c, r)) => (Some(*c), r.clone()),
        None => (None, String::new()),
    };
    cfg.emit(CallerEvent::Closed { code, reason });
    s.report
}

/// Resolves once the external hang-up signal holds `true`; never without one
/// (or after its sender is gone).
async fn wait_hangup(rx: Option<tokio::sync::watch::Receiver<bool>>) {
    if let Some(mut r) = rx
        && r.wait_for(|v| *v).await.is_ok()
    {
        return;
    }
    std::future::pending::<()>().await;
}

/// What a media socket runs on: plain TCP ([`StampedTcp`]) or `wss://`.
trait CallerIo: AsyncRead + AsyncWrite + Unpin + RxStamp {}
impl<T: AsyncRead + AsyncWrite + Unpin + RxStamp> CallerIo for T {}

enum Queued {
    /// (bytes when recorded else empty, length, played so far)
    Audio(Vec<u8>, usize, usize),
    Mark(String),
}

#[derive(Default)]
struct StepState {
    started: bool,
    frames_left: u64,
    start: u64,
    deadline: u64,
    bursts_at_start: u64,
}

struct Session<'a> {
    cfg: &'a CallerConfig,
    record: bool,
    keep_log: bool,
    tag_call: Option<u32>,
    /// Kernel receive time of the message being handled, when the socket has them.
    rx_us: Option<u32>,
    /// Reused for decoding received payloads.
    scratch: Vec<u8>,
    t0: Instant,
    seq: u64,
    chunk: u64,
    outbox: Vec<String>,
    report: CallerReport,
    stopped: bool,
    // playout (all times in samples since t0)
    queue: VecDeque<Queued>,
    queued_bytes: u64,
    play_pos: u64,
    last_audio_end: u64,
    in_burst: bool,
    // script
    step: usize,
    st: StepState,
    speech_pos: usize,
    noise_pos: usize,
}

impl<'a> Session<'a> {
    fn new(cfg: &'a CallerConfig, opts: &RunOptions, stream_sid: String, t0: Instant) -> Self {
        Session {
            cfg,
            record: opts.record_audio,
            keep_log: opts.keep_log,
            tag_call: opts.tag_call,
            rx_us: None,
            scratch: Vec::new(),
            t0,
            seq: 1,
            chunk: 0,
            outbox: Vec::new(),
            report: CallerReport {
                twiml: String::new(),
                stream_url: String::new(),
                custom_parameters: Vec::new(),
                stream_sid,
                call_sid: cfg.call_sid.clone(),
                frames_sent: 0,
                sent_payloads: Vec::new(),
                received_frames: Vec::new(),
                heard: Vec::new(),
                heard_bytes: 0,
                marks_received: Vec::new(),
                marks_echoed: Vec::new(),
                clears: Vec::new(),
                max_buffered_ms: 0,
                underruns: 0,
                bursts: 0,
                wait_timeouts: 0,
                close: None,
                end: CallEnd::Hangup,
                protocol_errors: Vec::new(),
                started_at: None,
                received_count: 0,
                received_bytes: 0,
                marks_echoed_count: 0,
                downlink_latency_us: Vec::new(),
                late_ticks: 0,
                max_tick_lag_us: 0,
            },
            stopped: false,
            queue: VecDeque::new(),
            queued_bytes: 0,
            play_pos: 0,
            last_audio_end: 0,
            in_burst: false,
            step: 0,
            st: StepState::default(),
            speech_pos: 0,
            noise_pos: 0,
        }
    }

    fn now(&self) -> u64 {
        self.samples_at(Instant::now())
    }

    /// `t` in µ-law samples since the stream started.
    fn samples_at(&self, t: Instant) -> u64 {
        let us = t.saturating_duration_since(self.t0).as_micros();
        u64::try_from(us * u128::from(SPMS) / 1000).unwrap_or(u64::MAX)
    }

    /// When the message being handled arrived, on the [`Self::now`] clock: its
    /// kernel receive time if the socket has one, else `now`.
    fn arrived_at(&self, now: u64) -> u64 {
        let Some(rx) = self.rx_us else {
            return now;
        };
        let age_us = crate::realtime::probe::now_us().wrapping_sub(rx);
        if age_us > 60_000_000 {
            return now; // a clock step, not an age
        }
        now.saturating_sub(u64::from(age_us) * SPMS / 1000)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    async fn flush<S: CallerIo>(&mut self, ws: &mut WebSocketStream<S>) -> Result<(), String> {
        if self.outbox.is_empty() {
            return Ok(());
        }
        for m in self.outbox.drain(..) {
            ws.feed(Message::text(m)).await.map_err(|e| e.to_string())?;
        }
        ws.flush().await.map_err(|e| e.to_string())
    }

    async fn run<S: CallerIo>(&mut self, ws: &mut WebSocketStream<S>) -> CallEnd {
        self.outbox.push(CONNECTED_MESSAGE.to_string());
        self.outbox.push(start_message(
            &self.report.stream_sid,
            &self.cfg.account_sid,
            &self.cfg.call_sid,
            &self.report.custom_parameters,
        ));
        self.t0 = Instant::now();
        self.report.started_at = Some(self.t0.into_std());
        if let Err(e) = self.flush(ws).await {
            return CallEnd::Disconnected(e);
        }
        let period = Duration::from_millis(FRAME_MS);
        let mut ticker = tokio::time::interval_at(self.t0 + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Built once: a fresh `wait_for` per turn of the loop registers a notification
        // on every frame.
        let hangup_rx = self.cfg.hangup.clone();
        let hung_up = wait_hangup(hangup_rx);
        tokio::pin!(hung_up);
        loop {
            tokio::select! {
                () = &mut hung_up => {
                    self.push_stop();
                    self.hangup(ws).await;
                    return CallEnd::Hangup;
                }
                due = ticker.tick() => {
                    let at = Instant::now();
                    let lag = at.saturating_duration_since(due);
                    if lag > Duration::from_millis(LATE_TICK_MS) {
                        self.report.late_ticks += 1;
                    }
                    let lag_us = u64::try_from(lag.as_micros()).unwrap_or(u64::MAX);
                    self.report.max_tick_lag_us = self.report.max_tick_lag_us.max(lag_us);
                    let now = self.samples_at(at);
                    self.advance(now);
                    let hangup = self.on_tick(now);
                    if let Err(e) = self.flush(ws).await {
                        return CallEnd::Disconnected(e);
                    }
                    if hangup {
                        self.hangup(ws).await;
                        return CallEnd::Hangup;
                    }
                }
                msg = ws.next() => {
                    match msg {
                        None => return CallEnd::Disconnected("connection closed without a close frame".into()),
                        Some(Err(e)) => return CallEnd::Disconnected(e.to_string()),
                        Some(Ok(Message::Close(frame))) => {
                            self.record_close(frame);
                            let _ = ws.close(None).await;
                            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async { while let Some(Ok(_)) = ws.next().await {} }).await;
                            return CallEnd::ServerClosed;
                        }
                        Some(Ok(Message::Text(t))) => {
                            let now = self.now();
                            self.advance(now);
                            self.rx_us = ws.get_ref().last_rx_us();
                            let at = self.arrived_at(now);
                            self.on_server_text(t.as_str(), at);
                            if let Err(e) = self.flush(ws).await {
                                return CallEnd::Disconnected(e);
                            }
                        }
                        Some(Ok(Message::Binary(b))) => self
                            .report
                            .protocol_errors
                            .push(format!("binary frame ({} bytes): Twilio accepts only JSON text", b.len())),
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                    }
                }
            }
        }
    }

    fn record_close(&mut self, frame: Option<CloseFrame>) {
        if self.report.close.is_none() {
            self.report.close = Some(match frame {
                Some(f) => (u16::from(f.code), f.reason.to_string()),
                None => (u16::from(CloseCode::Status), String::new()),
            });
        }
    }

    /// After `stop` was sent and flushed: close with 1000 and wait for the server's close.
    async fn hangup<S: CallerIo>(&mut self, ws: &mut WebSocketStream<S>) {
        let _ = self.flush(ws).await;
        let _ = ws
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "".into(),
            }))
            .await;
        let wait = async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(f) = m {
                    self.record_close(f);
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
    }

    /// The call is over: close an open burst where its audio ended (or was cut off).
    fn finish(&mut self) {
        let at = if self.queued_bytes == 0 {
            self.last_audio_end
        } else {
            self.now().min(self.play_pos + self.queued_bytes)
        };
        self.end_burst(at);
    }

    fn push_stop(&mut self) {
        let seq = self.next_seq();
        self.outbox.push(stop_message(
            seq,
            &self.report.stream_sid,
            &self.cfg.account_sid,
            &self.cfg.call_sid,
        ));
        self.stopped = true;
    }

    // -- script ---------------------------------------------------------------

    /// One 20 ms tick: runs zero-time steps, then produces this tick's frame.
    /// Returns true when the call must hang up (`stop` already queued).
    fn on_tick(&mut self, now: u64) -> bool {
        self.chunk += 1;
        let ts = self.chunk * FRAME_MS;
        loop {
            let Some(step) = self.cfg.script.get(self.step).cloned() else {
                self.push_stop();
                return true;
            };
            let first = !self.st.started;
            if first {
                self.st = StepState {
                    started: true,
                    start: now,
                    bursts_at_start: self.report.bursts,
                    ..StepState::default()
                };
            }
            match step {
                CallerStep::Speak { ms } | CallerStep::Silence { ms } => {
                    if first {
                        self.st.frames_left = u64::from(ms).div_ceil(FRAME_MS);
                        if let (CallerStep::Speak { ms }, true) = (&step, ms > 0) {
                            self.cfg.emit(CallerEvent::Spoke { at_ms: ts, ms: *ms });
                        }
                    }
                    if self.st.frames_left == 0 {
                        self.next_step();
                        continue;
                    }
                    self.st.frames_left -= 1;
                    let speech = matches!(step, CallerStep::Speak { .. });
                    if self.st.frames_left == 0 {
                        self.next_step();
                    }
                    self.send_frame(ts, speech);
                    return false;
                }
                CallerStep::WaitAgentSpeaking { timeout_ms } => {
                    if first {
                        self.st.deadline = now + u64::from(timeout_ms) * SPMS;
                    }
                    if self.queued_bytes > 0 || self.report.bursts > self.st.bursts_at_start {
                        self.next_step();
                        continue;
                    }
                    if now >= self.st.deadline {
                        self.report.wait_timeouts += 1;
                        self.next_step();
                        continue;
                    }
                    self.send_frame(ts, false);
                    return false;
                }
                CallerStep::WaitAgentQuiet {
                    quiet_ms,
                    timeout_ms,
                } => {
                    if first {
                        self.st.deadline = now + u64::from(timeout_ms) * SPMS;
                    }
                    let quiet_since = self.last_audio_end.max(self.st.start);
                    if self.queued_bytes == 0
                        && now.saturating_sub(quiet_since) >= u64::from(quiet_ms) * SPMS
                    {
                        self.next_step();
                        continue;
                    }
                    if now >= self.st.deadline {
                        self.report.wait_timeouts += 1;
                        self.next_step();
                        continue;
                    }
                    self.send_frame(ts, false);
                    return false;
                }
                CallerStep::Dtmf { digit } => {
                    let seq = self.next_seq();
                    self.outbox
                        .push(dtmf_message(seq, &self.report.stream_sid, digit));
                    self.cfg.emit(CallerEvent::Dtmf { digit });
                    self.next_step();
                }
                CallerStep::Hangup => {
                    self.push_stop();
                    return true;
                }
            }
        }
    }

    fn next_step(&mut self) {
        self.step += 1;
        self.st = StepState::default();
    }

    fn send_frame(&mut self, ts: u64, speech: bool) {
        if !speech && self.cfg.omit_silence {
            return;
        }
        let mut frame = if speech {
            clip_frame(speech_clip(), &mut self.speech_pos)
        } else {
            clip_frame(noise_clip(), &mut self.noise_pos)
        };
        if let Some(call) = self.tag_call {
            crate::realtime::probe::write_uplink_tag(
                &mut frame,
                crate::realtime::probe::UplinkTag {
                    call,
                    seq: self.report.frames_sent as u32,
                    sent_us: crate::realtime::probe::now_us(),
                },
            );
        }
        let seq = self.next_seq();
        let msg = media_message_bytes(seq, &self.report.stream_sid, self.chunk, ts, &frame);
        if self.record {
            self.report.sent_payloads.push((ts, B64.encode(frame)));
        }
        self.outbox.push(msg);
        self.report.frames_sent += 1;
    }

    // -- server messages --------------------------------------------------------

    fn on_server_text(&mut self, text: &str, now: u64) {
        if self.stopped {
            return; // Twilio ignores anything after the stream stopped
        }
        if !self.record && self.fast_media(text, now) {
            return;
        }
        let errs = &mut self.report.protocol_errors;
        let v: serde_json::Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                errs.push(format!("unparseable JSON ({e}): {}", truncate(text)));
                return;
            }
        };
        let Some(event) = v.get("event").and_then(|e| e.as_str()) else {
            errs.push(format!(
                "message without a string \"event\": {}",
                truncate(text)
            ));
            return;
        };
        if !matches!(event, "media" | "mark" | "clear") {
            errs.push(format!(
                "unexpected event {event:?} (only media, mark, clear are allowed; Twilio error 31924)"
            ));
            return;
        }
        match v.get("streamSid").and_then(|s| s.as_str()) {
            Some(sid) if sid == self.report.stream_sid => {}
            Some(sid) => {
                errs.push(format!("{event} with wrong streamSid {sid:?}"));
                return;
            }
            None => {
                errs.push(format!("{event} without streamSid"));
                return;
            }
        }
        match event {
            "media" => {
                let Some(payload) = v.pointer("/media/payload").and_then(|p| p.as_str()) else {
                    errs.push("media without a string media.payload".into());
                    return;
                };
                let audio = match B64.decode(payload) {
                    Ok(a) => a,
                    Err(e) => {
                        errs.push(format!("media payload is not base64: {e}"));
                        return;
                    }
                };
                if audio.is_empty() {
                    errs.push("media with an empty payload".into());
                    return;
                }
                if audio.starts_with(b"RIFF") {
                    errs.push("media payload has a WAV header (Twilio wants raw µ-law)".into());
                }
                self.on_media_audio(&audio, now);
                let len = audio.len();
                let buf = if self.record { audio } else { Vec::new() };
                self.enqueue_audio(buf, len, now);
            }
            "mark" => {
                let Some(name) = v.pointer("/mark/name").and_then(|p| p.as_str()) else {
                    errs.push("mark without a string mark.name".into());
                    return;
                };
                if self.keep_log {
                    self.report.marks_received.push(name.to_string());
                }
                self.queue.push_back(Queued::Mark(name.to_string()));
                self.advance(now); // a mark on an idle queue is echoed at once
            }
            _ => self.clear(now),
        }
    }

    /// A well-formed `media` for this stream (the common case), without a JSON
    /// tree or a per-frame allocation. `false`: take the general path (which
    /// also reports what is wrong).
    fn fast_media(&mut self, text: &str, now: u64) -> bool {
        #[derive(serde::Deserialize)]
        struct Media<'a> {
            event: &'a str,
            #[serde(rename = "streamSid")]
            stream_sid: &'a str,
            media: Payload<'a>,
        }
        #[derive(serde::Deserialize)]
        struct Payload<'a> {
            payload: &'a str,
        }
        if !text.starts_with(r#"{"event":"media""#) {
            return false;
        }
        let Ok(m) = serde_json::from_str::<Media<'_>>(text) else {
            return false;
        };
        if m.event != "media" || m.stream_sid != self.report.stream_sid {
            return false;
        }
        let mut audio = std::mem::take(&mut self.scratch);
        audio.clear();
        let ok = B64.decode_vec(m.media.payload, &mut audio).is_ok()
            && !audio.is_empty()
            && !audio.starts_with(b"RIFF");
        if ok {
            self.on_media_audio(&audio, now);
            self.enqueue_audio(Vec::new(), audio.len(), now);
        }
        self.scratch = audio;
        ok
    }

    /// Counters and probes of one received `media` payload.
    fn on_media_audio(&mut self, audio: &[u8], now: u64) {
        self.report.received_count += 1;
        self.report.received_bytes += audio.len() as u64;
        if self.keep_log {
            self.report.received_frames.push(ReceivedFrame {
                at_ms: now / SPMS,
                len: audio.len(),
            });
        }
        if self.tag_call.is_some()
            && let Some(sent) = crate::realtime::probe::read_downlink_tag(audio)
        {
            let rx = self.rx_us.unwrap_or_else(crate::realtime::probe::now_us);
            let lat = rx.wrapping_sub(sent);
            self.report.downlink_latency_us.push(lat);
        }
    }

    // -- playout ------------------------------------------------------------------

    /// Queue `len` bytes of agent audio (`audio` holds them when recording,
    /// else it is empty).
    fn enqueue_audio(&mut self, audio: Vec<u8>, len: usize, now: u64) {
        if self.queued_bytes == 0 {
            if self.in_burst && now > self.last_audio_end {
                self.report.underruns += 1;
            }
            // Idle: marks were already echoed by advance(), so the queue is empty. With
            // kernel arrival times, `now` can lie before the end of audio this caller
            // already played: the new audio follows it.
            self.play_pos = now.max(self.last_audio_end);
            self.begin_burst(now);
        }
        self.queued_bytes += len as u64;
        self.queue.push_back(Queued::Audio(audio, len, 0));
        self.report.max_buffered_ms = self.report.max_buffered_ms.max(self.queued_bytes / SPMS);
    }

    fn begin_burst(&mut self, at: u64) {
        if !self.in_burst {
            self.in_burst = true;
            self.report.bursts += 1;
            self.cfg
                .emit(CallerEvent::AgentAudioStarted { at_ms: at / SPMS });
        }
    }

    fn end_burst(&mut self, at: u64) {
        if self.in_burst {
            self.in_burst = false;
            self.cfg
                .emit(CallerEvent::AgentAudioStopped { at_ms: at / SPMS });
        }
    }

    fn echo_mark(&mut self, name: String, at: u64) {
        if name.starts_with(DONE_MARK_PREFIX) {
            self.end_burst(at);
        }
        let seq = self.next_seq();
        self.outbox
            .push(mark_message(seq, &self.report.stream_sid, &name));
        self.cfg
            .emit(CallerEvent::MarkEchoed { name: name.clone() });
        self.report.marks_echoed_count += 1;
        if self.keep_log {
            self.report.marks_echoed.push(name);
        }
    }

    /// Play queued audio up to `now` and echo the marks reached.
    fn advance(&mut self, now: u64) {
        loop {
            match self.queue.front_mut() {
                None => break,
                Some(Queued::Mark(name)) => {
                    let name = std::mem::take(name);
                    self.queue.pop_front();
                    let at = self.play_pos.min(now);
                    self.echo_mark(name, at);
                }
                Some(Queued::Audio(buf, len, off)) => {
                    if self.play_pos >= now {
                        break;
                    }
                    let len = *len;
                    let avail = len - *off;
                    let n = avail.min(usize::try_from(now - self.play_pos).unwrap_or(usize::MAX));
                    if !self.in_burst {
                        // e.g. audio queued behind a "done:" mark
                        self.in_burst = true;
                        self.report.bursts += 1;
                        self.cfg.emit(CallerEvent::AgentAudioStarted {
                            at_ms: self.play_pos / SPMS,
                        });
                    }
                    if self.record {
                        self.report.heard.extend_from_slice(&buf[*off..*off + n]);
                    }
                    *off += n;
                    let done = *off == len;
                    self.play_pos += n as u64;
                    self.queued_bytes -= n as u64;
                    self.report.heard_bytes += n as u64;
                    if done {
                        self.queue.pop_front();
                        if self.queued_bytes == 0 {
                            self.last_audio_end = self.play_pos;
                        }
                    }
                }
            }
        }
        if self.in_burst
            && self.queued_bytes == 0
            && now.saturating_sub(self.last_audio_end) > BURST_GAP_MS * SPMS
        {
            self.end_burst(self.last_audio_end);
        }
    }

    /// Twilio's `clear`: drop queued audio, echo every pending mark at once.
    fn clear(&mut self, now: u64) {
        self.report.clears.push(now / SPMS);
        self.cfg.emit(CallerEvent::Cleared { at_ms: now / SPMS });
        if self.queued_bytes > 0 {
            self.last_audio_end = now;
        }
        self.queued_bytes = 0;
        let pending: Vec<Queued> = self.queue.drain(..).collect();
        for q in pending {
            if let Queued::Mark(name) = q {
                self.echo_mark(name, now);
            }
        }
        self.end_burst(now);
    }
}

fn truncate(s: &str) -> String {
    if s.len() <= 120 {
        return s.to_string();
    }
    let mut end = 120;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn twiml_with_escaped_params() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><!-- hi --><Response><Say voice="Polly.Joanna">This call may be recorded.</Say><Connect><Stream statusCallback="https://voice.example.com/stream-status" url="wss://voice.example.com/media-stream"><Parameter name="tenant" value="acme &amp; co" /><Parameter name='q' value='&lt;a b=&quot;c&quot;&gt; &apos;x&apos; &#65;&#x42; &bogus; a>b'/></Stream></Connect></Response>"#;
        let (url, params) = parse_connect_stream(xml).unwrap();
        assert_eq!(url, "wss://voice.example.com/media-stream");
        assert_eq!(
            params,
            vec![
                ("tenant".to_string(), "acme & co".to_string()),
                (
                    "q".to_string(),
                    "<a b=\"c\"> 'x' AB &bogus; a>b".to_string()
                ),
            ]
        );
    }

    #[test]
    fn twiml_errors() {
        for bad in [
            "",
            "<Response></Response>",
            "<Response><Start><Stream url=\"wss://x/y\"/></Start></Response>",
            "<Response><Connect><Stream url=\"ws://x/y\"/></Connect></Response>",
            "<Response><Connect><Stream url=\"wss://x/y?a=1\"/></Connect></Response>",
            "<Response><Connect><Stream/></Connect></Response>",
            "<Other><Connect><Stream url=\"wss://x/y\"/></Connect></Other>",
            "<Response><Connect><Stream url=\"wss://x/y",
            "<Response><Connect><Stream url=wss://x/y></Connect></Response>",
        ] {
            assert!(parse_connect_stream(bad).is_err(), "{bad}");
        }
        let (u, p) = parse_connect_stream(
            "<Response><Connect><Stream url=\"wss://x/y\"/></Connect></Response>",
        )
        .unwrap();
        assert_eq!((u.as_str(), p.len()), ("wss://x/y", 0));
    }

    #[test]
    fn http_response_parsing() {
        let (s, b) =
            parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloXX").unwrap();
        assert_eq!((s, b.as_str()), (200, "hello"));
        let (s, b) =
            parse_http_response(b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((s, b.as_str()), (403, "abcde"));
        assert!(parse_http_response(b"garbage").is_err());
        assert!(parse_http_response(b"HTTP/1.1 abc\r\n\r\n").is_err());
        assert!(
            parse_http_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
                .is_err()
        );
    }

    #[test]
    fn message_shapes() {
        let p = vec![("a\"b".to_string(), "x & y".to_string())];
        let v: serde_json::Value =
            serde_json::from_str(&start_message("MZ1", "AC1", "CA1", &p)).unwrap();
        assert_eq!(v["event"], "start");
        assert_eq!(v["sequenceNumber"], "1");
        assert_eq!(v["streamSid"], "MZ1");
        assert_eq!(v["start"]["streamSid"], "MZ1");
        assert_eq!(v["start"]["customParameters"]["a\"b"], "x & y");
        assert_eq!(
            media_message_bytes(3, "MZ1", 2, 40, &[0xFF; 160]),
            media_message(3, "MZ1", 2, 40, &B64.encode([0xFF; 160]))
        );
        assert_eq!(
            media_message_bytes(3, "M\"Z", 2, 40, &[1, 2]),
            media_message(3, "M\"Z", 2, 40, &B64.encode([1, 2]))
        );
        let v: serde_json::Value =
            serde_json::from_str(&media_message(3, "MZ1", 2, 40, "AAAA")).unwrap();
        assert_eq!(v["media"]["timestamp"], "40");
        assert_eq!(v["media"]["chunk"], "2");
        assert_eq!(v["sequenceNumber"], "3");
        let v: serde_json::Value = serde_json::from_str(&dtmf_message(5, "MZ1", '#')).unwrap();
        assert_eq!(v["dtmf"]["digit"], "#");
        let v: serde_json::Value =
            serde_json::from_str(&stop_message(9, "MZ1", "AC1", "CA1")).unwrap();
        assert_eq!(v["stop"]["callSid"], "CA1");
        let v: serde_json::Value = serde_json::from_str(&mark_message(9, "MZ1", "m\"1")).unwrap();
        assert_eq!(v["mark"]["name"], "m\"1");
    }

    #[test]
    fn audio_levels() {
        use voxbridge_audio::mulaw_rms;
        let speech = speech_clip();
        for f in speech.chunks(FRAME_BYTES) {
            let rms = mulaw_rms(f);
            assert!(rms > 2000.0, "speech frame rms {rms}");
        }
        assert!(mulaw_rms(noise_clip()) < 10.0);
    }
}
