//! The Realtime Calls API: accept, reject, refer and hang up a SIP call that
//! reached OpenAI's SIP connector (`realtime.call.incoming`).
//!
//! All four are `POST {base}/realtime/calls/{call_id}/{op}` with
//! `Authorization: Bearer <key>` and no `OpenAI-Beta` header (shapes captured
//! from the official `openai` Python package, `client.realtime.calls.*`,
//! CONFORMANCE.md §2.4):
//!
//! | op | body |
//! | --- | --- |
//! | accept | the session, [`AcceptSession`] (`CallAcceptParams`) |
//! | reject | `{"status_code": 486}` or `{}` (OpenAI then sends 603 Decline) |
//! | refer | `{"target_uri": "tel:+1…"}` or a `sip:` URI |
//! | hangup | none |
//!
//! A 404 means the call is gone (the caller hung up, another node accepted
//! it, or it timed out): [`CallsError::Gone`], which callers treat as a
//! no-op rather than a failure. Requests are never retried here: accept has
//! to answer within the caller's ring budget, and the other three are cheap
//! for the caller to repeat.

use crate::session::{
    NoiseReduction, SessionConfig, Transcription, TurnDetection as SessionTurnDetection,
};
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_LENGTH, HeaderValue};
use serde::{Serialize, Serializer};
use std::time::Duration;

/// The default REST base (`OPENAI_API_BASE`).
pub const DEFAULT_API_BASE: &str = "https://api.openai.com/v1";
/// Connecting must be quick: accept runs inside the caller's ring time.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Whole request, connect included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Accept body
// ---------------------------------------------------------------------------------------------

/// A function tool (`{"type":"function","name","description","parameters"}`;
/// openai-python `RealtimeFunctionToolParam`). The same shape is used in
/// `session.update`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionTool {
    /// Always `"function"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub name: String,
    pub description: String,
    /// A JSON Schema object.
    pub parameters: serde_json::Value,
}

impl FunctionTool {
    pub fn new(
        name: impl Into<String>,
        description: impl Into<String>,
        parameters: serde_json::Value,
    ) -> Self {
        FunctionTool {
            kind: "function",
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

/// `tool_choice`: a mode, or one function forced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolChoice {
    Auto,
    None,
    Required,
    Function(String),
}

impl Serialize for ToolChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Forced<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            name: &'a str,
        }
        match self {
            ToolChoice::Auto => s.serialize_str("auto"),
            ToolChoice::None => s.serialize_str("none"),
            ToolChoice::Required => s.serialize_str("required"),
            ToolChoice::Function(name) => Forced {
                kind: "function",
                name,
            }
            .serialize(s),
        }
    }
}

/// Turn detection as the Calls API takes it for SIP: the type and the
/// behaviour flags only. `threshold`, `prefix_padding_ms` and
/// `silence_duration_ms` make accept fail with 400 "Unknown parameter:
/// 'session.audio.input.turn_detection.threshold'" (openai-agents-js issue
/// #741; the SDK refuses them since PR #1170), so this type cannot express
/// them. `idle_timeout_ms` is left out as well: it is equally a server_vad
/// tuning field, it is not known to be accepted on SIP, and a 400 at accept
/// loses the call; the bridge runs its own silence timeout.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AcceptTurnDetection {
    ServerVad {
        create_response: bool,
        interrupt_response: bool,
    },
    SemanticVad {
        /// low | medium | high | auto
        eagerness: String,
        create_response: bool,
        interrupt_response: bool,
    },
}

impl From<&SessionTurnDetection> for AcceptTurnDetection {
    fn from(t: &SessionTurnDetection) -> Self {
        match t {
            SessionTurnDetection::ServerVad {
                create_response,
                interrupt_response,
                ..
            } => AcceptTurnDetection::ServerVad {
                create_response: *create_response,
                interrupt_response: *interrupt_response,
            },
            SessionTurnDetection::SemanticVad {
                eagerness,
                create_response,
                interrupt_response,
            } => AcceptTurnDetection::SemanticVad {
                eagerness: eagerness.clone(),
                create_response: *create_response,
                interrupt_response: *interrupt_response,
            },
        }
    }
}

/// `audio.input` without `format`: on SIP the codec is negotiated in SDP.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcceptAudioInput {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcription: Option<Transcription>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_reduction: Option<NoiseReduction>,
    /// Always serialized: `null` selects manual turns (as in `session.update`).
    pub turn_detection: Option<AcceptTurnDetection>,
}

/// `audio.output` without `format`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcceptAudioOutput {
    pub voice: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcceptAudio {
    pub input: AcceptAudioInput,
    pub output: AcceptAudioOutput,
}

/// The body of `POST /realtime/calls/{call_id}/accept`: openai-python
/// `types/realtime/call_accept_params.py::CallAcceptParams` (a TypedDict,
/// only `type` required). We send `type`, `model`, `instructions`,
/// `output_modalities`, `audio` (voice, transcription, noise reduction,
/// turn detection; never a `format`), `tools`, `tool_choice` and
/// `max_output_tokens`. `conformance/check_accept.py` validates the bodies
/// strictly against that type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AcceptSession {
    /// Always `"realtime"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub model: String,
    pub instructions: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub output_modalities: Vec<String>,
    pub audio: AcceptAudio,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<FunctionTool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_choice: Option<ToolChoice>,
    /// 1..=4096; absent = the API default (`inf`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
}

impl AcceptSession {
    /// The accept body for the same agent as a Media Streams
    /// `session.update`: model, instructions, modalities, voice,
    /// transcription, noise reduction and turn detection carry over; the
    /// audio formats and the VAD tuning fields are dropped (see
    /// [`AcceptTurnDetection`]).
    pub fn from_session(s: &SessionConfig) -> Self {
        AcceptSession {
            kind: "realtime",
            model: s.model.clone(),
            instructions: s.instructions.clone(),
            output_modalities: s.output_modalities.clone(),
            audio: AcceptAudio {
                input: AcceptAudioInput {
                    transcription: s.audio.input.transcription.clone(),
                    noise_reduction: s.audio.input.noise_reduction.clone(),
                    turn_detection: s
                        .audio
                        .input
                        .turn_detection
                        .as_ref()
                        .map(AcceptTurnDetection::from),
                },
                output: AcceptAudioOutput {
                    voice: s.audio.output.voice.clone(),
                },
            },
            tools: s.tools.clone(),
            tool_choice: None,
            max_output_tokens: None,
        }
    }

    pub fn with_tools(mut self, tools: Vec<FunctionTool>, choice: Option<ToolChoice>) -> Self {
        self.tools = tools;
        self.tool_choice = choice;
        self
    }

    pub fn with_max_output_tokens(mut self, n: Option<u32>) -> Self {
        self.max_output_tokens = n;
        self
    }

    /// What the API would refuse with a 400 after the call has already been
    /// routed to us; checked before sending.
    pub fn validate(&self) -> Result<(), CallsError> {
        let bad = |m: String| Err(CallsError::InvalidRequest(m));
        if self.model.trim().is_empty() {
            return bad("accept: model is empty".into());
        }
        if self.audio.output.voice.trim().is_empty() {
            return bad("accept: voice is empty".into());
        }
        if let Some(n) = self.max_output_tokens
            && !(1..=4096).contains(&n)
        {
            return bad(format!("accept: max_output_tokens {n} is not in 1..=4096"));
        }
        for m in &self.output_modalities {
            if m != "audio" && m != "text" {
                return bad(format!("accept: unknown output modality {m:?}"));
            }
        }
        if self.output_modalities.len() > 1 {
            return bad("accept: output_modalities takes one of audio or text".into());
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.tools {
            if t.name.is_empty() || !seen.insert(t.name.as_str()) {
                return bad(format!(
                    "accept: tool name {:?} is empty or repeated",
                    t.name
                ));
            }
            if !t.parameters.is_object() {
                return bad(format!(
                    "accept: parameters of tool {:?} must be a JSON Schema object",
                    t.name
                ));
            }
        }
        if let Some(ToolChoice::Function(name)) = &self.tool_choice
            && !self.tools.iter().any(|t| &t.name == name)
        {
            return bad(format!("accept: tool_choice names unknown tool {name:?}"));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a Calls API request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallsError {
    /// 404: the call no longer exists. Not a failure for the caller.
    #[error("{op}: the call is gone (404): {message}")]
    Gone { op: &'static str, message: String },
    /// Any other non-2xx, with OpenAI's `{"error":{"message","type","code"}}`.
    #[error("{op}: OpenAI answered {status}: {message}")]
    Api {
        op: &'static str,
        status: u16,
        message: String,
        kind: Option<String>,
        code: Option<String>,
    },
    #[error("{op}: timed out: {message}")]
    Timeout { op: &'static str, message: String },
    #[error("{op}: {message}")]
    Http { op: &'static str, message: String },
    /// Refused locally before sending.
    #[error("{0}")]
    InvalidRequest(String),
}

impl CallsError {
    /// `CALL_GONE`, `OPENAI_API_ERROR`, `OPENAI_TIMEOUT`, `OPENAI_UNREACHABLE`,
    /// `INVALID_REQUEST`.
    pub fn code(&self) -> &'static str {
        match self {
            CallsError::Gone { .. } => "CALL_GONE",
            CallsError::Api { .. } => "OPENAI_API_ERROR",
            CallsError::Timeout { .. } => "OPENAI_TIMEOUT",
            CallsError::Http { .. } => "OPENAI_UNREACHABLE",
            CallsError::InvalidRequest(_) => "INVALID_REQUEST",
        }
    }

    /// True for [`CallsError::Gone`].
    pub fn is_gone(&self) -> bool {
        matches!(self, CallsError::Gone { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Cheap to clone (the connection pool is shared). The key never appears in
/// `Debug` output.
#[derive(Clone)]
pub struct CallsClient {
    base: String,
    auth: HeaderValue,
    http: reqwest::Client,
}

impl std::fmt::Debug for CallsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallsClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl CallsClient {
    /// `base` is the REST base including `/v1` (`OPENAI_API_BASE`, default
    /// [`DEFAULT_API_BASE`]); a trailing `/` is ignored. Timeouts default to
    /// [`DEFAULT_CONNECT_TIMEOUT`] and [`DEFAULT_REQUEST_TIMEOUT`].
    pub fn new(base: &str, api_key: &str) -> Result<Self, CallsError> {
        Self::with_timeouts(
            base,
            api_key,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_REQUEST_TIMEOUT,
        )
    }

    pub fn with_timeouts(
        base: &str,
        api_key: &str,
        connect: Duration,
        request: Duration,
    ) -> Result<Self, CallsError> {
        let parsed = url::Url::parse(base)
            .map_err(|e| CallsError::InvalidRequest(format!("OpenAI API base {base:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.host_str().is_none()
            || parsed.query().is_some()
            || parsed.fragment().is_some()
        {
            return Err(CallsError::InvalidRequest(format!(
                "OpenAI API base {base:?} must be an http(s) URL without query or fragment"
            )));
        }
        if api_key.trim().is_empty() {
            return Err(CallsError::InvalidRequest("OpenAI API key is empty".into()));
        }
        let mut auth =
            HeaderValue::from_str(&format!("Bearer {}", api_key.trim())).map_err(|_| {
                CallsError::InvalidRequest("OpenAI API key is not a valid header value".into())
            })?;
        auth.set_sensitive(true);
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(request)
            .user_agent(concat!("voxbridge-realtime/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CallsError::Http {
                op: "build client",
                message: error_chain(&e),
            })?;
        Ok(CallsClient {
            base: base.trim_end_matches('/').to_owned(),
            auth,
            http,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Answer the call with this session. Gives [`CallsError::Gone`] when the
    /// call no longer exists.
    pub async fn accept(&self, call_id: &str, session: &AcceptSession) -> Result<(), CallsError> {
        session.validate()?;
        let body = serde_json::to_vec(session)
            .map_err(|e| CallsError::InvalidRequest(format!("accept: {e}")))?;
        self.post("accept", call_id, Some(body)).await
    }

    /// Refuse the call with a SIP status (400..=699; OpenAI's default, when
    /// `None`, is 603 Decline). Busy is 486.
    pub async fn reject(&self, call_id: &str, status_code: Option<u16>) -> Result<(), CallsError> {
        let body = match status_code {
            Some(code) if !(400..=699).contains(&code) => {
                return Err(CallsError::InvalidRequest(format!(
                    "reject: SIP status {code} is not a final error status (400..=699)"
                )));
            }
            Some(code) => serde_json::json!({ "status_code": code }),
            None => serde_json::json!({}),
        };
        self.post("reject", call_id, Some(body.to_string().into_bytes()))
            .await
    }

    /// Cold-transfer the call (SIP REFER) to `tel:+…`, `sip:…` or `sips:…`.
    pub async fn refer(&self, call_id: &str, target_uri: &str) -> Result<(), CallsError> {
        let lower = target_uri.to_ascii_lowercase();
        let rest = ["tel:", "sip:", "sips:"]
            .iter()
            .find_map(|p| lower.strip_prefix(p));
        if rest.is_none_or(str::is_empty)
            || target_uri
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(CallsError::InvalidRequest(format!(
                "refer: target {target_uri:?} must be a tel:, sip: or sips: URI"
            )));
        }
        let body = serde_json::json!({ "target_uri": target_uri });
        self.post("refer", call_id, Some(body.to_string().into_bytes()))
            .await
    }

    /// End the call (no body).
    pub async fn hangup(&self, call_id: &str) -> Result<(), CallsError> {
        self.post("hangup", call_id, None).await
    }

    /// The URL of `op` for `call_id` (the id goes into the path, so only
    /// `[A-Za-z0-9_-]` is allowed).
    pub fn url(&self, call_id: &str, op: &str) -> Result<String, CallsError> {
        check_call_id(call_id)?;
        Ok(format!("{}/realtime/calls/{call_id}/{op}", self.base))
    }

    async fn post(
        &self,
        op: &'static str,
        call_id: &str,
        json: Option<Vec<u8>>,
    ) -> Result<(), CallsError> {
        let url = self.url(call_id, op)?;
        let mut rb = self
            .http
            .post(&url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(ACCEPT, "application/json");
        rb = match json {
            Some(body) => rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body),
            None => rb.header(CONTENT_LENGTH, "0"),
        };
        let started = std::time::Instant::now();
        let resp = rb.send().await.map_err(|e| transport_error(op, &e))?;
        let status = resp.status();
        tracing::debug!(
            op,
            call_id,
            status = status.as_u16(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "realtime calls request"
        );
        if status.is_success() {
            // The body (empty for all four) is not needed, but reading it to
            // the end lets the connection go back to the pool: the next
            // accept then skips the TCP and TLS handshakes.
            let _ = resp.bytes().await;
            return Ok(());
        }
        let body = resp.bytes().await.unwrap_or_default();
        let (message, kind, code) = parse_api_error(&body);
        if status == StatusCode::NOT_FOUND {
            return Err(CallsError::Gone { op, message });
        }
        Err(CallsError::Api {
            op,
            status: status.as_u16(),
            message,
            kind,
            code,
        })
    }
}

/// Call ids look like `rtc_u1_9c65…`; anything outside `[A-Za-z0-9_-]`
/// (at most 200 of them) is refused so it cannot change the request path.
pub fn check_call_id(call_id: &str) -> Result<(), CallsError> {
    if call_id.is_empty()
        || call_id.len() > 200
        || !call_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(CallsError::InvalidRequest(format!(
            "call id {:?} is not [A-Za-z0-9_-]+",
            call_id.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// `(message, type, code)` from `{"error":{"message","type","code"}}`, or a
/// snippet of the body when it is something else.
fn parse_api_error(body: &[u8]) -> (String, Option<String>, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(serde::Deserialize)]
    struct Inner {
        #[serde(default)]
        message: Option<String>,
        #[serde(default, rename = "type")]
        kind: Option<String>,
        #[serde(default)]
        code: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope { error }) => {
            let code = error.code.and_then(|c| match c {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Null => None,
                other => Some(other.to_string()),
            });
            let message = error
                .message
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "(no message)".into());
            (message, error.kind, code)
        }
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let snippet: String = text.chars().take(200).collect();
            let message = if snippet.trim().is_empty() {
                "(empty body)".into()
            } else {
                snippet
            };
            (message, None, None)
        }
    }
}

fn transport_error(op: &'static str, e: &reqwest::Error) -> CallsError {
    let message = error_chain(e);
    if e.is_timeout() {
        CallsError::Timeout { op, message }
    } else {
        CallsError::Http { op, message }
    }
}

/// `e` and its sources joined by `: ` (reqwest's `Display` hides the cause).
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::TurnDetection;
    use serde_json::json;

    fn phone(td: Option<TurnDetection>) -> SessionConfig {
        SessionConfig::phone(
            "gpt-realtime-2.1",
            "You are an AI assistant calling for Acme.",
            "marin",
            td,
            Some(Transcription {
                model: "gpt-4o-mini-transcribe".into(),
                language: Some("en".into()),
            }),
            Some(NoiseReduction {
                kind: "near_field".into(),
            }),
        )
    }

    fn server_vad() -> TurnDetection {
        TurnDetection::ServerVad {
            threshold: 0.6,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            idle_timeout_ms: Some(8000),
            create_response: true,
            interrupt_response: true,
        }
    }

    fn has_key(v: &serde_json::Value, key: &str) -> bool {
        match v {
            serde_json::Value::Object(m) => {
                m.contains_key(key) || m.values().any(|x| has_key(x, key))
            }
            serde_json::Value::Array(a) => a.iter().any(|x| has_key(x, key)),
            _ => false,
        }
    }

    #[test]
    fn accept_body_drops_formats_and_vad_tuning() {
        let s = AcceptSession::from_session(&phone(Some(server_vad())));
        let v = serde_json::to_value(&s).expect("json");
        for k in [
            "format",
            "threshold",
            "prefix_padding_ms",
            "silence_duration_ms",
            "idle_timeout_ms",
        ] {
            assert!(!has_key(&v, k), "{k} in {v}");
        }
        assert_eq!(
            v,
            json!({
                "type": "realtime",
                "model": "gpt-realtime-2.1",
                "instructions": "You are an AI assistant calling for Acme.",
                "output_modalities": ["audio"],
                "audio": {
                    "input": {
                        "transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
                        "noise_reduction": {"type": "near_field"},
                        "turn_detection": {"type": "server_vad", "create_response": true, "interrupt_response": true}
                    },
                    "output": {"voice": "marin"}
                }
            })
        );
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn accept_body_semantic_vad_manual_and_tools() {
        let sem = TurnDetection::SemanticVad {
            eagerness: "low".into(),
            create_response: true,
            interrupt_response: false,
        };
        let v = serde_json::to_value(AcceptSession::from_session(&phone(Some(sem)))).expect("json");
        assert_eq!(
            v["audio"]["input"]["turn_detection"],
            json!({"type":"semantic_vad","eagerness":"low","create_response":true,"interrupt_response":false})
        );
        let manual = AcceptSession::from_session(&phone(None));
        let v = serde_json::to_value(&manual).expect("json");
        assert!(v["audio"]["input"]["turn_detection"].is_null());
        assert!(v.get("tools").is_none() && v.get("tool_choice").is_none());

        let params = json!({"type":"object","properties":{"reason":{"type":"string"}},"required":["reason"]});
        let s = manual
            .with_tools(
                vec![FunctionTool::new(
                    "end_call",
                    "End the call.",
                    params.clone(),
                )],
                Some(ToolChoice::Auto),
            )
            .with_max_output_tokens(Some(1024));
        let v = serde_json::to_value(&s).expect("json");
        assert_eq!(
            v["tools"],
            json!([{"type":"function","name":"end_call","description":"End the call.","parameters":params}])
        );
        assert_eq!(v["tool_choice"], "auto");
        assert_eq!(v["max_output_tokens"], 1024);
        assert_eq!(s.validate(), Ok(()));
        let forced = s.clone().with_tools(
            s.tools.clone(),
            Some(ToolChoice::Function("end_call".into())),
        );
        assert_eq!(
            serde_json::to_value(&forced).expect("json")["tool_choice"],
            json!({"type":"function","name":"end_call"})
        );
        for (c, want) in [
            (ToolChoice::None, "none"),
            (ToolChoice::Required, "required"),
        ] {
            assert_eq!(serde_json::to_value(c).expect("json"), want);
        }
    }

    #[test]
    fn accept_validation() {
        let base = AcceptSession::from_session(&phone(None));
        let bad: Vec<AcceptSession> = vec![
            AcceptSession {
                model: " ".into(),
                ..base.clone()
            },
            base.clone().with_max_output_tokens(Some(0)),
            base.clone().with_max_output_tokens(Some(4097)),
            AcceptSession {
                output_modalities: vec!["audio".into(), "text".into()],
                ..base.clone()
            },
            AcceptSession {
                output_modalities: vec!["video".into()],
                ..base.clone()
            },
            base.clone().with_tools(
                vec![
                    FunctionTool::new("a", "", json!({"type":"object"})),
                    FunctionTool::new("a", "", json!({"type":"object"})),
                ],
                None,
            ),
            base.clone()
                .with_tools(vec![FunctionTool::new("a", "", json!("nope"))], None),
            base.clone().with_tools(
                vec![FunctionTool::new("a", "", json!({"type":"object"}))],
                Some(ToolChoice::Function("b".into())),
            ),
        ];
        for s in bad {
            let e = s.validate().expect_err("invalid");
            assert_eq!(e.code(), "INVALID_REQUEST");
        }
    }

    #[test]
    fn urls_and_ids() {
        let c = CallsClient::new("https://api.openai.com/v1/", "sk-test").expect("client");
        assert_eq!(
            c.url("rtc_u1_9c6574da8b8a41a18da9308f4ad974ce", "accept")
                .expect("url"),
            "https://api.openai.com/v1/realtime/calls/rtc_u1_9c6574da8b8a41a18da9308f4ad974ce/accept"
        );
        for bad in ["", "../x", "a/b", "a?b", "a b", "rtc%2F"] {
            assert!(c.url(bad, "accept").is_err(), "{bad}");
        }
        assert!(!format!("{c:?}").contains("sk-test"));
        for bad in ["ftp://x", "not a url", "https://x/v1?a=1", "https://x/v1#f"] {
            assert!(CallsClient::new(bad, "k").is_err(), "{bad}");
        }
        assert!(CallsClient::new(DEFAULT_API_BASE, " ").is_err());
        assert!(CallsClient::new(DEFAULT_API_BASE, "bad\nkey").is_err());
    }

    #[test]
    fn api_error_parsing() {
        let (m, k, c) = parse_api_error(
            br#"{"error":{"message":"Unknown parameter: 'session.audio.input.turn_detection.threshold'.","type":"invalid_request_error","code":"unknown_parameter","param":"session.audio.input.turn_detection.threshold"}}"#,
        );
        assert!(m.starts_with("Unknown parameter"));
        assert_eq!(k.as_deref(), Some("invalid_request_error"));
        assert_eq!(c.as_deref(), Some("unknown_parameter"));
        let (m, k, c) =
            parse_api_error(br#"{"error":{"message":"x","type":"server_error","code":null}}"#);
        assert_eq!(
            (m.as_str(), k.as_deref(), c),
            ("x", Some("server_error"), None)
        );
        let (m, _, _) = parse_api_error(b"<html>Bad gateway</html>");
        assert_eq!(m, "<html>Bad gateway</html>");
        let (m, _, _) = parse_api_error(b"");
        assert_eq!(m, "(empty body)");
    }
}
