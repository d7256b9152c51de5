//! Configuration: an optional `voxbridge.toml`, then environment variables
//! (the names users already know from Twilio and OpenAI samples win).
//!
//! Every key of the file has the same name as its variable, lower-cased
//! (`PUBLIC_URL` -> `public_url`).

use serde::Deserialize;
use std::path::Path;
use voxbridge_realtime::session::{NoiseReduction, Transcription, TurnDetection, VOICES};

/// Effective configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen port (`PORT`).
    pub port: u16,
    /// Listen address (`BIND`).
    pub bind: String,
    /// The URL Twilio reaches us at (`PUBLIC_URL`). Signatures are computed
    /// over it and the Stream URL in the TwiML is derived from it.
    pub public_url: String,
    /// `OPENAI_API_KEY`.
    pub openai_api_key: Option<String>,
    /// Realtime WebSocket base (`OPENAI_REALTIME_URL`).
    pub openai_realtime_url: String,
    /// Realtime model (`OPENAI_MODEL`).
    pub openai_model: String,
    /// Agent voice (`VOICE`).
    pub voice: String,
    /// System instructions (`INSTRUCTIONS`).
    pub instructions: String,
    /// Whether the agent speaks first (`AGENT_SPEAKS_FIRST`).
    pub agent_speaks_first: bool,
    /// Instructions for the first response (`GREETING`).
    pub greeting: String,
    /// The greeting (a disclosure) is played whole, never cut by barge-in
    /// (`GREETING_UNINTERRUPTIBLE`).
    pub greeting_uninterruptible: bool,
    /// `server_vad`, `semantic_vad` or `none` (`TURN_DETECTION`).
    pub turn_detection: String,
    /// server_vad threshold 0..1 (`VAD_THRESHOLD`).
    pub vad_threshold: f64,
    /// `VAD_PREFIX_PADDING_MS`.
    pub vad_prefix_padding_ms: u32,
    /// `VAD_SILENCE_DURATION_MS`.
    pub vad_silence_duration_ms: u32,
    /// semantic_vad eagerness: low, medium, high, auto (`VAD_EAGERNESS`).
    pub vad_eagerness: String,
    /// Let the server cancel its response when the caller speaks
    /// (`INTERRUPT_RESPONSE`); when false the bridge sends `response.cancel`.
    pub interrupt_response: bool,
    /// Caller transcription model, or `none` (`TRANSCRIPTION_MODEL`).
    pub transcription_model: String,
    /// Transcription language hint, e.g. `en` (`TRANSCRIPTION_LANGUAGE`).
    pub transcription_language: Option<String>,
    /// `near_field`, `far_field` or `none` (`NOISE_REDUCTION`).
    pub noise_reduction: String,
    /// Twilio auth token: validates X-Twilio-Signature (`TWILIO_AUTH_TOKEN`).
    pub twilio_auth_token: Option<String>,
    /// Secret for per-call stream tokens (`VOXBRIDGE_STREAM_SECRET`); shared
    /// by all nodes. Defaults to one derived from the Twilio auth token, or
    /// a random one per process.
    pub stream_secret: Option<String>,
    /// Outbound pacing lead (`PACING_LEAD_MS`).
    pub pacing_lead_ms: u64,
    /// Audio between playback marks (`MARK_INTERVAL_MS`).
    pub mark_interval_ms: u64,
    /// Audio per pacer write mid-burst (`PACING_BATCH_MS`); see `PacerConfig::batch`.
    pub pacing_batch_ms: u64,
    /// Close a media socket that sends no `start` in time (`START_TIMEOUT_MS`).
    pub start_timeout_ms: u64,
    /// How long a pre-connected model socket waits for its media socket
    /// (`PRECONNECT_TTL_MS`).
    pub preconnect_ttl_ms: u64,
    /// Caller audio kept while the model socket is still opening (`INPUT_BUFFER_MS`).
    pub input_buffer_ms: u64,
    /// Largest WebSocket message accepted from Twilio (`MAX_FRAME_BYTES`).
    pub max_frame_bytes: usize,
    /// Concurrent calls this node accepts (`MAX_CALLS`).
    pub max_calls: usize,
    /// `sqlite://…` or `postgres://…` (`DATABASE_URL`).
    pub database_url: String,
    /// Twilio account (`TWILIO_ACCOUNT_SID`).
    pub twilio_account_sid: Option<String>,
    /// Caller id for outbound calls (`TWILIO_PHONE_NUMBER`).
    pub twilio_phone_number: Option<String>,
    /// Twilio REST base (`TWILIO_API_BASE`).
    pub twilio_api_base: String,
    /// API key auth instead of the auth token (`TWILIO_API_KEY_SID`, `TWILIO_API_KEY_SECRET`).
    pub twilio_api_key_sid: Option<String>,
    pub twilio_api_key_secret: Option<String>,
    /// Ask Twilio to record outbound calls, dual channel (`RECORD_CALLS`).
    pub record_calls: bool,
    /// Seconds to let an outbound call ring (`RING_TIMEOUT_S`).
    pub ring_timeout_s: u32,
    /// Longest outbound call in seconds (`MAX_CALL_DURATION_S`).
    pub max_call_duration_s: u32,
    /// Answering-machine detection on outbound calls: `none`, `Enable`,
    /// `DetectMessageEnd` (`MACHINE_DETECTION`); always asynchronous.
    pub machine_detection: String,
    /// REST requests per minute per API key (`RATE_LIMIT_PER_MINUTE`).
    pub rate_limit_per_minute: u32,
    /// Largest REST request body in bytes (`MAX_BODY_BYTES`).
    pub max_body_bytes: usize,
    /// OpenAI REST base, for the Realtime Calls API (`OPENAI_API_BASE`).
    pub openai_api_base: String,
    /// `whsec_…` secret of OpenAI's webhooks (`OPENAI_WEBHOOK_SECRET`); the SIP connector
    /// path (`/openai/webhook`) is off without it.
    pub openai_webhook_secret: Option<String>,
    /// SIP connector calls are taken only within these hours, `HH:MM-HH:MM`
    /// (`INBOUND_HOURS`); others are rejected. Unset: always.
    pub inbound_hours: Option<String>,
    /// Time zone of `INBOUND_HOURS` (`INBOUND_TIMEZONE`).
    pub inbound_timezone: String,
    /// Outbound calls: the greeting waits this long for a person (machine detection's
    /// verdict, or the callee speaking) before it plays (`OUTBOUND_GREETING_WAIT_MS`; 0 = no wait).
    pub outbound_greeting_wait_ms: u64,
    /// Run the campaign worker on this node (`CAMPAIGN_WORKER`).
    pub campaign_worker: bool,
    /// Campaign calls this node has live at most, all campaigns together
    /// (`CAMPAIGN_MAX_CONCURRENT`); each campaign has its own limit too.
    pub campaign_max_concurrent: u32,
    /// How often the worker looks for due contacts and in-doubt attempts when
    /// nothing wakes it (`CAMPAIGN_POLL_MS`).
    pub campaign_poll_ms: u64,
    /// How long the node that wrote a `dialing` attempt owns it before another
    /// node may ask Twilio what became of it (`CAMPAIGN_LEASE_MS`).
    pub campaign_lease_ms: u64,
    /// This node's name in attempts and cluster events (`NODE_ID`); random by default.
    pub node_id: Option<String>,
    /// Named agents (`[[agents]]` in the file); a `default` one is always
    /// derived from INSTRUCTIONS / VOICE / GREETING when not given.
    pub agents: Vec<AgentConfig>,
    /// Agent profile files: `*.toml`, `*.yaml`, `*.yml` (`AGENTS_DIR`,
    /// default `agents` in the working directory; a missing directory
    /// means no file agents). Re-read when they change and on SIGHUP.
    pub agents_dir: std::path::PathBuf,
    /// The directory of the configuration file (knowledge files of
    /// `[[agents]]` are relative to it); not a setting.
    #[serde(skip)]
    pub config_dir: Option<std::path::PathBuf>,
}

/// One agent profile: a `[[agents]]` table here, or a file in `AGENTS_DIR`
/// (`agents/*.toml`, `agents/*.yaml`). Every field is optional but `name`
/// (which a file defaults to its stem); [`crate::agents`] resolves and
/// validates it, naming the file and the field in every error.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// Unique name (a file: its stem when not given).
    pub name: String,
    /// What the agent is for (shown by `voxbridge agents list`).
    pub description: Option<String>,
    /// `appointment_reminder`, `survey`, `notification`, `transit_booking`
    /// or `custom` (the default).
    pub task_type: Option<String>,
    /// The instructions template; default: the task type's built-in one.
    pub instructions: Option<String>,
    /// What the agent's first response does (a template); default: GREETING.
    pub greeting: Option<String>,
    /// The AI-disclosure line spoken first: text, `true` (the default text)
    /// or `false` (none).
    pub disclosure: Option<DisclosureConfig>,
    /// Who the calls are for (`{{agent.organization}}`).
    pub organization: Option<String>,
    pub voice: Option<String>,
    pub model: Option<String>,
    pub turn_detection: Option<TurnDetectionConfig>,
    pub transcription: Option<TranscriptionConfig>,
    /// Snippets the agent may use: `{text = "…"}` or `{file = "faq.md"}`
    /// (relative to the profile file); 64 KiB in all.
    pub knowledge: Vec<KnowledgeConfig>,
    /// Built-in tools to enable; default: `end_call`, `opt_out`, plus
    /// `record_survey_response` (survey), `transfer_call` (with `transfer`),
    /// `voicemail_detected` (with `voicemail`).
    pub tools: Option<Vec<String>>,
    /// HTTP endpoints the agent may call.
    pub http_tools: Vec<HttpToolConfig>,
    pub transfer: Option<TransferConfig>,
    pub voicemail: Option<VoicemailConfig>,
    /// Longest call in seconds; default MAX_CALL_DURATION_S.
    pub max_call_duration_s: Option<u32>,
    /// End the call after this many seconds with nobody speaking.
    pub silence_timeout_s: Option<u32>,
    /// Inbound calls to these numbers (E.164) get this agent.
    pub numbers: Vec<String>,
}

/// `disclosure = "text"`, `disclosure = true` or `disclosure = false`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum DisclosureConfig {
    On(bool),
    Text(String),
}

/// A profile's turn detection; unset fields come from the TURN_DETECTION /
/// VAD_* settings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnDetectionConfig {
    /// `server_vad`, `semantic_vad` or `none`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub threshold: Option<f64>,
    pub prefix_padding_ms: Option<u32>,
    pub silence_duration_ms: Option<u32>,
    /// semantic_vad: low, medium, high, auto.
    pub eagerness: Option<String>,
}

/// A profile's caller transcription (`model = "none"` turns it off).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TranscriptionConfig {
    pub model: Option<String>,
    pub language: Option<String>,
}

/// One knowledge snippet: exactly one of `text` and `file`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KnowledgeConfig {
    pub text: Option<String>,
    pub file: Option<String>,
}

/// An HTTP tool the agent can call.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpToolConfig {
    pub name: String,
    pub description: String,
    pub url: String,
    /// GET, POST (the default), PUT, PATCH or DELETE.
    pub method: Option<String>,
    /// Values may contain `${ENV_NAME}` (or `${ENV_NAME:-fallback}`).
    pub headers: std::collections::BTreeMap<String, String>,
    /// JSON schema of the arguments: `{"type": "object", …}`.
    pub parameters: Option<serde_json::Value>,
    /// Default 5000, at most 30000.
    pub timeout_ms: Option<u64>,
}

/// Where `transfer_call` sends the caller.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TransferConfig {
    /// E.164 number or `sip:` URI.
    pub to: String,
    /// Warm transfer through a conference (default: cold).
    pub warm: bool,
    /// Warm transfer: what the human hears before joining.
    pub conference_intro: Option<String>,
}

/// What to do on an answering machine.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VoicemailConfig {
    /// `leave_message` or `hang_up`; default: leave_message when a message
    /// is given, else hang_up.
    pub action: Option<String>,
    /// The message (a template) for `leave_message`.
    pub message: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8080,
            bind: "0.0.0.0".into(),
            public_url: String::new(),
            openai_api_key: None,
            openai_realtime_url: "wss://api.openai.com/v1/realtime".into(),
            openai_model: "gpt-realtime-2.1".into(),
            voice: "marin".into(),
            instructions:
                "You are a helpful, concise phone assistant. You are an AI; say so if asked. \
                           Speak naturally and briefly, one or two sentences at a time."
                    .into(),
            agent_speaks_first: true,
            greeting: "Greet the caller in one short sentence, say that you are an AI assistant, \
                       and ask how you can help."
                .into(),
            greeting_uninterruptible: true,
            turn_detection: "server_vad".into(),
            vad_threshold: 0.5,
            vad_prefix_padding_ms: 300,
            vad_silence_duration_ms: 500,
            vad_eagerness: "auto".into(),
            interrupt_response: true,
            transcription_model: "gpt-4o-mini-transcribe".into(),
            transcription_language: None,
            noise_reduction: "none".into(),
            twilio_auth_token: None,
            stream_secret: None,
            pacing_lead_ms: 160,
            mark_interval_ms: 100,
            pacing_batch_ms: crate::playback::DEFAULT_BATCH_MS,
            start_timeout_ms: 10_000,
            preconnect_ttl_ms: 30_000,
            input_buffer_ms: 5_000,
            max_frame_bytes: 64 * 1024,
            max_calls: 2_000,
            database_url: "sqlite://voxbridge.db".into(),
            twilio_account_sid: None,
            twilio_phone_number: None,
            twilio_api_base: "https://api.twilio.com".into(),
            twilio_api_key_sid: None,
            twilio_api_key_secret: None,
            record_calls: false,
            ring_timeout_s: 30,
            max_call_duration_s: 3_600,
            machine_detection: "none".into(),
            rate_limit_per_minute: 600,
            max_body_bytes: 64 * 1024,
            openai_api_base: "https://api.openai.com/v1".into(),
            openai_webhook_secret: None,
            inbound_hours: None,
            inbound_timezone: "UTC".into(),
            outbound_greeting_wait_ms: 2_500,
            campaign_worker: true,
            campaign_max_concurrent: 20,
            campaign_poll_ms: 1_000,
            campaign_lease_ms: 60_000,
            node_id: None,
            agents: Vec::new(),
            agents_dir: "agents".into(),
            config_dir: None,
        }
    }
}

/// A configuration problem, naming the setting.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {path}: {source}")]
    Toml {
        path: String,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{0}")]
    Agents(String),
    #[error("{name}={value:?} is not valid: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
}

fn invalid(name: &'static str, value: impl ToString, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        name,
        value: value.to_string(),
        reason: reason.into(),
    }
}

impl Config {
    /// Load `path` (if given, or `./voxbridge.toml` if it exists) and apply
    /// the process environment.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let default_path = Path::new("voxbridge.toml");
        let path = path.or_else(|| default_path.exists().then_some(default_path));
        Self::from_sources(path, |k| std::env::var(k).ok())
    }

    /// Load from a file (optional) and an environment lookup (for tests).
    pub fn from_sources(
        path: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut cfg = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|source| ConfigError::Toml {
                    path: p.display().to_string(),
                    source: Box::new(source),
                })?
            }
            None => Config::default(),
        };
        if let Some(p) = path {
            cfg.config_dir = Some(
                p.parent()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| ".".into()),
            );
        }
        cfg.apply_env(&env)?;
        cfg.validate(&env)?;
        Ok(cfg)
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        fn parse<T: std::str::FromStr>(name: &'static str, v: &str) -> Result<T, ConfigError>
        where
            T::Err: std::fmt::Display,
        {
            v.trim()
                .parse()
                .map_err(|e: T::Err| invalid(name, v, e.to_string()))
        }
        fn boolean(name: &'static str, v: &str) -> Result<bool, ConfigError> {
            match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(true),
                "0" | "false" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, v, "expected true or false")),
            }
        }
        macro_rules! set {
            ($name:literal, $field:ident, string) => {
                if let Some(v) = env($name) {
                    self.$field = v;
                }
            };
            ($name:literal, $field:ident, opt) => {
                if let Some(v) = env($name) {
                    self.$field = if v.is_empty() { None } else { Some(v) };
                }
            };
            ($name:literal, $field:ident, bool) => {
                if let Some(v) = env($name) {
                    self.$field = boolean($name, &v)?;
                }
            };
            ($name:literal, $field:ident, parse) => {
                if let Some(v) = env($name) {
                    self.$field = parse($name, &v)?;
                }
            };
        }
        set!("PORT", port, parse);
        set!("BIND", bind, string);
        set!("PUBLIC_URL", public_url, string);
        set!("OPENAI_API_KEY", openai_api_key, opt);
        set!("OPENAI_REALTIME_URL", openai_realtime_url, string);
        set!("OPENAI_MODEL", openai_model, string);
        set!("VOICE", voice, string);
        set!("INSTRUCTIONS", instructions, string);
        set!("AGENT_SPEAKS_FIRST", agent_speaks_first, bool);
        set!("GREETING", greeting, string);
        set!("GREETING_UNINTERRUPTIBLE", greeting_uninterruptible, bool);
        set!("TURN_DETECTION", turn_detection, string);
        set!("VAD_THRESHOLD", vad_threshold, parse);
        set!("VAD_PREFIX_PADDING_MS", vad_prefix_padding_ms, parse);
        set!("VAD_SILENCE_DURATION_MS", vad_silence_duration_ms, parse);
        set!("VAD_EAGERNESS", vad_eagerness, string);
        set!("INTERRUPT_RESPONSE", interrupt_response, bool);
        set!("TRANSCRIPTION_MODEL", transcription_model, string);
        set!("TRANSCRIPTION_LANGUAGE", transcription_language, opt);
        set!("NOISE_REDUCTION", noise_reduction, string);
        set!("TWILIO_AUTH_TOKEN", twilio_auth_token, opt);
        set!("VOXBRIDGE_STREAM_SECRET", stream_secret, opt);
        set!("PACING_LEAD_MS", pacing_lead_ms, parse);
        set!("MARK_INTERVAL_MS", mark_interval_ms, parse);
        set!("PACING_BATCH_MS", pacing_batch_ms, parse);
        set!("START_TIMEOUT_MS", start_timeout_ms, parse);
        set!("PRECONNECT_TTL_MS", preconnect_ttl_ms, parse);
        set!("INPUT_BUFFER_MS", input_buffer_ms, parse);
        set!("MAX_FRAME_BYTES", max_frame_bytes, parse);
        set!("MAX_CALLS", max_calls, parse);
        set!("DATABASE_URL", database_url, string);
        set!("TWILIO_ACCOUNT_SID", twilio_account_sid, opt);
        set!("TWILIO_PHONE_NUMBER", twilio_phone_number, opt);
        set!("TWILIO_API_BASE", twilio_api_base, string);
        set!("TWILIO_API_KEY_SID", twilio_api_key_sid, opt);
        set!("TWILIO_API_KEY_SECRET", twilio_api_key_secret, opt);
        set!("RECORD_CALLS", record_calls, bool);
        set!("RING_TIMEOUT_S", ring_timeout_s, parse);
        set!("MAX_CALL_DURATION_S", max_call_duration_s, parse);
        set!("MACHINE_DETECTION", machine_detection, string);
        set!("RATE_LIMIT_PER_MINUTE", rate_limit_per_minute, parse);
        set!("MAX_BODY_BYTES", max_body_bytes, parse);
        set!("OPENAI_API_BASE", openai_api_base, string);
        set!("OPENAI_WEBHOOK_SECRET", openai_webhook_secret, opt);
        set!("INBOUND_HOURS", inbound_hours, opt);
        set!("INBOUND_TIMEZONE", inbound_timezone, string);
        set!(
            "OUTBOUND_GREETING_WAIT_MS",
            outbound_greeting_wait_ms,
            parse
        );
        set!("CAMPAIGN_WORKER", campaign_worker, bool);
        set!("CAMPAIGN_MAX_CONCURRENT", campaign_max_concurrent, parse);
        set!("CAMPAIGN_POLL_MS", campaign_poll_ms, parse);
        set!("CAMPAIGN_LEASE_MS", campaign_lease_ms, parse);
        set!("NODE_ID", node_id, opt);
        if let Some(v) = env("AGENTS_DIR") {
            self.agents_dir = v.into();
        }
        if self.public_url.is_empty() {
            self.public_url = format!("http://localhost:{}", self.port);
        }
        Ok(())
    }

    fn validate(&mut self, env: &dyn Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let url = url::Url::parse(&self.public_url)
            .map_err(|e| invalid("PUBLIC_URL", &self.public_url, e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(invalid(
                "PUBLIC_URL",
                &self.public_url,
                "must be an http(s) URL with a host",
            ));
        }
        if url.query().is_some() {
            return Err(invalid(
                "PUBLIC_URL",
                &self.public_url,
                "must not have a query",
            ));
        }
        self.public_url = self.public_url.trim_end_matches('/').to_owned();
        voxbridge_realtime::realtime_url(&self.openai_realtime_url, &self.openai_model).map_err(
            |e| {
                invalid(
                    "OPENAI_REALTIME_URL",
                    &self.openai_realtime_url,
                    e.to_string(),
                )
            },
        )?;
        if !VOICES.contains(&self.voice.as_str()) {
            return Err(invalid(
                "VOICE",
                &self.voice,
                format!("not a Realtime voice; one of {}", VOICES.join(", ")),
            ));
        }
        match self.turn_detection.as_str() {
            "server_vad" | "semantic_vad" | "none" => {}
            _ => {
                return Err(invalid(
                    "TURN_DETECTION",
                    &self.turn_detection,
                    "server_vad, semantic_vad or none",
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.vad_threshold) {
            return Err(invalid(
                "VAD_THRESHOLD",
                self.vad_threshold,
                "between 0 and 1",
            ));
        }
        if !matches!(
            self.vad_eagerness.as_str(),
            "low" | "medium" | "high" | "auto"
        ) {
            return Err(invalid(
                "VAD_EAGERNESS",
                &self.vad_eagerness,
                "low, medium, high or auto",
            ));
        }
        if !matches!(
            self.noise_reduction.as_str(),
            "none" | "near_field" | "far_field"
        ) {
            return Err(invalid(
                "NOISE_REDUCTION",
                &self.noise_reduction,
                "none, near_field or far_field",
            ));
        }
        if self.pacing_lead_ms < 20 || self.pacing_lead_ms > 5_000 {
            return Err(invalid("PACING_LEAD_MS", self.pacing_lead_ms, "20..=5000"));
        }
        if self.pacing_batch_ms < 20 || self.pacing_batch_ms > self.pacing_lead_ms {
            return Err(invalid(
                "PACING_BATCH_MS",
                self.pacing_batch_ms,
                "20..=PACING_LEAD_MS",
            ));
        }
        if self.mark_interval_ms < 20 {
            return Err(invalid(
                "MARK_INTERVAL_MS",
                self.mark_interval_ms,
                "at least 20",
            ));
        }
        if !matches!(
            self.machine_detection.as_str(),
            "none" | "Enable" | "DetectMessageEnd"
        ) {
            return Err(invalid(
                "MACHINE_DETECTION",
                &self.machine_detection,
                "none, Enable or DetectMessageEnd",
            ));
        }
        if self.rate_limit_per_minute == 0 {
            return Err(invalid("RATE_LIMIT_PER_MINUTE", 0, "at least 1"));
        }
        if let Some(h) = &self.inbound_hours {
            let ok = h.split_once('-').is_some_and(|(a, b)| {
                a.trim().parse::<jiff::civil::Time>().is_ok()
                    && b.trim().parse::<jiff::civil::Time>().is_ok()
            });
            if !ok {
                return Err(invalid("INBOUND_HOURS", h, "expected HH:MM-HH:MM"));
            }
        }
        if jiff::tz::TimeZone::get(&self.inbound_timezone).is_err() {
            return Err(invalid(
                "INBOUND_TIMEZONE",
                &self.inbound_timezone,
                "not an IANA time zone",
            ));
        }
        if let Some(s) = &self.openai_webhook_secret
            && voxbridge_realtime::webhooks::WebhookVerifier::new(s).is_err()
        {
            return Err(invalid(
                "OPENAI_WEBHOOK_SECRET",
                "(hidden)",
                "expected whsec_ followed by base64",
            ));
        }
        if !(10..=60_000).contains(&self.campaign_poll_ms) {
            return Err(invalid(
                "CAMPAIGN_POLL_MS",
                self.campaign_poll_ms,
                "between 10 and 60000",
            ));
        }
        if self.campaign_lease_ms < 5_000 {
            return Err(invalid(
                "CAMPAIGN_LEASE_MS",
                self.campaign_lease_ms,
                "at least 5000 (longer than a Twilio create-call request)",
            ));
        }
        // `[[agents]]` tables: the same checks as profile files (the files
        // themselves are loaded by the agent registry, see `crate::agents`).
        crate::agents::Agents::from_config_checked(self, env)
            .map_err(|e| ConfigError::Agents(e.to_string()))?;
        if self.max_frame_bytes < 1024 {
            return Err(invalid(
                "MAX_FRAME_BYTES",
                self.max_frame_bytes,
                "at least 1024",
            ));
        }
        Ok(())
    }

    /// The `wss://` Stream URL for the TwiML: PUBLIC_URL's host, `/twilio/media`.
    pub fn stream_url(&self) -> String {
        let rest = self
            .public_url
            .split_once("://")
            .map_or(self.public_url.as_str(), |(_, r)| r);
        format!("wss://{rest}/twilio/media")
    }

    /// The turn detection to configure (None = manual turns).
    pub fn turn_detection(&self) -> Option<TurnDetection> {
        match self.turn_detection.as_str() {
            "server_vad" => Some(TurnDetection::ServerVad {
                threshold: self.vad_threshold,
                prefix_padding_ms: self.vad_prefix_padding_ms,
                silence_duration_ms: self.vad_silence_duration_ms,
                idle_timeout_ms: None,
                create_response: true,
                interrupt_response: self.interrupt_response,
            }),
            "semantic_vad" => Some(TurnDetection::SemanticVad {
                eagerness: self.vad_eagerness.clone(),
                create_response: true,
                interrupt_response: self.interrupt_response,
            }),
            _ => None,
        }
    }

    pub fn transcription(&self) -> Option<Transcription> {
        (self.transcription_model != "none" && !self.transcription_model.is_empty()).then(|| {
            Transcription {
                model: self.transcription_model.clone(),
                language: self.transcription_language.clone(),
            }
        })
    }

    pub fn noise_reduction(&self) -> Option<NoiseReduction> {
        (self.noise_reduction != "none").then(|| NoiseReduction {
            kind: self.noise_reduction.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn load(vars: &[(&str, &str)], file: Option<&str>) -> Result<Config, ConfigError> {
        let env: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let dir = std::env::temp_dir().join(format!("vbcfg-{}", uuid::Uuid::new_v4()));
        let path = file.map(|text| {
            std::fs::create_dir_all(&dir).expect("dir");
            let p = dir.join("voxbridge.toml");
            std::fs::write(&p, text).expect("write");
            p
        });
        Config::from_sources(path.as_deref(), |k| env.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = load(&[], None).expect("config");
        assert_eq!(c.port, 8080);
        assert_eq!(c.public_url, "http://localhost:8080");
        assert_eq!(c.openai_model, "gpt-realtime-2.1");
        assert_eq!(c.openai_realtime_url, "wss://api.openai.com/v1/realtime");
        assert_eq!(c.stream_url(), "wss://localhost:8080/twilio/media");
        assert!(matches!(
            c.turn_detection(),
            Some(TurnDetection::ServerVad { .. })
        ));
    }

    #[test]
    fn env_overrides_the_file() {
        let c = load(
            &[
                ("PUBLIC_URL", "https://voice.example.com/"),
                ("VOICE", "cedar"),
            ],
            Some("voice = \"ash\"\nport = 9000\nturn_detection = \"semantic_vad\"\n"),
        )
        .expect("config");
        assert_eq!(c.voice, "cedar");
        assert_eq!(c.port, 9000);
        assert_eq!(c.stream_url(), "wss://voice.example.com/twilio/media");
        assert!(matches!(
            c.turn_detection(),
            Some(TurnDetection::SemanticVad { .. })
        ));
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (vars, name) in [
            (vec![("PORT", "eighty")], "PORT"),
            (vec![("VOICE", "nova")], "VOICE"),
            (vec![("PUBLIC_URL", "ftp://x")], "PUBLIC_URL"),
            (vec![("PUBLIC_URL", "https://x/?a=1")], "PUBLIC_URL"),
            (vec![("VAD_THRESHOLD", "2")], "VAD_THRESHOLD"),
            (vec![("AGENT_SPEAKS_FIRST", "maybe")], "AGENT_SPEAKS_FIRST"),
            (
                vec![("OPENAI_REALTIME_URL", "https://api.openai.com")],
                "OPENAI_REALTIME_URL",
            ),
            (vec![("TURN_DETECTION", "vad")], "TURN_DETECTION"),
        ] {
            let err = load(&vars, None).expect_err("must fail").to_string();
            assert!(err.starts_with(name), "{err}");
        }
        let err = load(&[], Some("colour = 1\n"))
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }
}
