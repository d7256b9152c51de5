//! Server events (GA), parsed in one pass.
//!
//! Every frame is read into one flat, borrowing struct ([`Raw`]); nested
//! objects the bridge rarely needs (`session`, `response`, `item`) are kept
//! as raw JSON slices and only parsed for the events that carry them. The
//! audio `delta` stays a borrowed `&str`. Unknown event types become
//! [`ServerEvent::Other`], so a new event from OpenAI is logged, not fatal.

use crate::session::AudioFormat;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// A server event the bridge acts on, or `Other` for the rest.
#[derive(Debug, PartialEq)]
pub enum ServerEvent<'a> {
    SessionCreated(SessionInfo),
    SessionUpdated(SessionInfo),
    SpeechStarted {
        audio_start_ms: u64,
        item_id: String,
    },
    SpeechStopped {
        audio_end_ms: u64,
        item_id: String,
    },
    InputCommitted {
        item_id: String,
    },
    ResponseCreated {
        response_id: String,
    },
    ResponseDone {
        response_id: String,
        status: String,
        usage: Option<Usage>,
    },
    OutputItemDone {
        response_id: String,
        item: OutputItem,
    },
    AudioDelta {
        response_id: Cow<'a, str>,
        item_id: Cow<'a, str>,
        content_index: u32,
        delta: Cow<'a, str>,
    },
    AudioDone {
        response_id: String,
        item_id: String,
        content_index: u32,
    },
    AudioTranscriptDone {
        response_id: String,
        item_id: String,
        transcript: String,
    },
    InputTranscriptionCompleted {
        item_id: String,
        transcript: String,
    },
    InputTranscriptionFailed {
        item_id: String,
        message: String,
    },
    ItemTruncated {
        item_id: String,
        audio_end_ms: u64,
    },
    /// SIP only: a key press on the SIP leg.
    DtmfReceived {
        digit: String,
    },
    Error(ApiError),
    /// Any other event (known but unused here, or new): its `type`.
    Other {
        kind: String,
    },
}

/// The parts of the effective session the bridge checks.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionInfo {
    pub id: Option<String>,
    pub model: Option<String>,
    pub input_format: Option<AudioFormat>,
    pub output_format: Option<AudioFormat>,
    pub voice: Option<String>,
    /// `audio.input.turn_detection.type`, `None` when manual.
    pub turn_detection: Option<String>,
    /// `audio.input.turn_detection.interrupt_response` (default true).
    pub interrupt_response: bool,
}

/// `response.done.response.usage`. `cached_tokens` is a subset of `input_tokens`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize)]
pub struct Usage {
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub input_token_details: Option<TokenDetails>,
    #[serde(default)]
    pub output_token_details: Option<TokenDetails>,
}

#[derive(Debug, Clone, PartialEq, Default, Deserialize, serde::Serialize)]
pub struct TokenDetails {
    #[serde(default)]
    pub text_tokens: u64,
    #[serde(default)]
    pub audio_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
}

/// An output item as reported by `response.output_item.done`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct OutputItem {
    #[serde(default)]
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub status: Option<String>,
    /// For `function_call` items.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub call_id: Option<String>,
    #[serde(default)]
    pub arguments: Option<String>,
}

/// The `error` object of an `error` event.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct ApiError {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub param: Option<String>,
    #[serde(default)]
    pub event_id: Option<String>,
}

/// Why a server frame could not be parsed.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid server event JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{kind}` event missing field `{field}`")]
    Missing { kind: String, field: &'static str },
}

/// A string that borrows from the input when it has no escapes. serde only
/// borrows a bare `Cow<str>` field; inside an `Option` it would allocate.
#[derive(Debug, PartialEq)]
struct MaybeBorrowed<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for MaybeBorrowed<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = MaybeBorrowed<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(MaybeBorrowed(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    response_id: Option<MaybeBorrowed<'a>>,
    #[serde(borrow, default)]
    item_id: Option<MaybeBorrowed<'a>>,
    #[serde(default)]
    content_index: Option<u32>,
    #[serde(borrow, default)]
    delta: Option<MaybeBorrowed<'a>>,
    #[serde(default)]
    transcript: Option<String>,
    #[serde(default)]
    audio_start_ms: Option<u64>,
    #[serde(default)]
    audio_end_ms: Option<u64>,
    #[serde(borrow, default)]
    session: Option<&'a RawValue>,
    #[serde(borrow, default)]
    response: Option<&'a RawValue>,
    #[serde(borrow, default)]
    item: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(default)]
    event: Option<String>,
}

#[derive(Deserialize)]
struct RawSession {
    id: Option<String>,
    model: Option<String>,
    audio: Option<RawAudio>,
}
#[derive(Deserialize)]
struct RawAudio {
    input: Option<RawAudioIn>,
    output: Option<RawAudioOut>,
}
#[derive(Deserialize)]
struct RawAudioIn {
    format: Option<AudioFormat>,
    turn_detection: Option<RawTurn>,
}
#[derive(Deserialize)]
struct RawTurn {
    #[serde(rename = "type")]
    kind: Option<String>,
    interrupt_response: Option<bool>,
}
#[derive(Deserialize)]
struct RawAudioOut {
    format: Option<AudioFormat>,
    voice: Option<serde_json::Value>,
}
#[derive(Deserialize)]
struct RawResponse {
    id: Option<String>,
    status: Option<String>,
    usage: Option<Usage>,
}

/// Parse one text frame from the Realtime API.
pub fn parse(text: &str) -> Result<ServerEvent<'_>, ParseError> {
    let raw: Raw<'_> = serde_json::from_str(text)?;
    let kind = raw.kind.as_ref();
    let missing = |field: &'static str| ParseError::Missing {
        kind: kind.to_owned(),
        field,
    };
    let own = |v: Option<MaybeBorrowed<'_>>, field: &'static str| {
        v.map(|s| s.0.into_owned()).ok_or_else(|| missing(field))
    };
    Ok(match kind {
        "response.output_audio.delta" => ServerEvent::AudioDelta {
            response_id: raw.response_id.ok_or_else(|| missing("response_id"))?.0,
            item_id: raw.item_id.ok_or_else(|| missing("item_id"))?.0,
            content_index: raw.content_index.unwrap_or(0),
            delta: raw.delta.ok_or_else(|| missing("delta"))?.0,
        },
        "session.created" | "session.updated" => {
            let s: RawSession =
                serde_json::from_str(raw.session.ok_or_else(|| missing("session"))?.get())?;
            let (input, output) = match s.audio {
                Some(a) => (a.input, a.output),
                None => (None, None),
            };
            let (input_format, turn) = match input {
                Some(i) => (i.format, i.turn_detection),
                None => (None, None),
            };
            let (output_format, voice) = match output {
                Some(o) => (o.format, o.voice),
                None => (None, None),
            };
            let info = SessionInfo {
                id: s.id,
                model: s.model,
                input_format,
                output_format,
                voice: voice.map(|v| match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                }),
                interrupt_response: turn
                    .as_ref()
                    .and_then(|t| t.interrupt_response)
                    .unwrap_or(true),
                turn_detection: turn.and_then(|t| t.kind),
            };
            if kind == "session.created" {
                ServerEvent::SessionCreated(info)
            } else {
                ServerEvent::SessionUpdated(info)
            }
        }
        "input_audio_buffer.speech_started" => ServerEvent::SpeechStarted {
            audio_start_ms: raw.audio_start_ms.unwrap_or(0),
            item_id: own(raw.item_id, "item_id")?,
        },
        "input_audio_buffer.speech_stopped" => ServerEvent::SpeechStopped {
            audio_end_ms: raw.audio_end_ms.unwrap_or(0),
            item_id: own(raw.item_id, "item_id")?,
        },
        "input_audio_buffer.committed" => ServerEvent::InputCommitted {
            item_id: own(raw.item_id, "item_id")?,
        },
        "response.created" | "response.done" => {
            let r: RawResponse =
                serde_json::from_str(raw.response.ok_or_else(|| missing("response"))?.get())?;
            let response_id = r.id.ok_or_else(|| missing("response.id"))?;
            if kind == "response.created" {
                ServerEvent::ResponseCreated { response_id }
            } else {
                ServerEvent::ResponseDone {
                    response_id,
                    status: r.status.unwrap_or_default(),
                    usage: r.usage,
                }
            }
        }
        "response.output_item.done" => ServerEvent::OutputItemDone {
            response_id: own(raw.response_id, "response_id")?,
            item: serde_json::from_str(raw.item.ok_or_else(|| missing("item"))?.get())?,
        },
        "response.output_audio.done" => ServerEvent::AudioDone {
            response_id: own(raw.response_id, "response_id")?,
            item_id: own(raw.item_id, "item_id")?,
            content_index: raw.content_index.unwrap_or(0),
        },
        "response.output_audio_transcript.done" => ServerEvent::AudioTranscriptDone {
            response_id: own(raw.response_id, "response_id")?,
            item_id: own(raw.item_id, "item_id")?,
            transcript: raw.transcript.unwrap_or_default(),
        },
        "conversation.item.input_audio_transcription.completed" => {
            ServerEvent::InputTranscriptionCompleted {
                item_id: own(raw.item_id, "item_id")?,
                transcript: raw.transcript.unwrap_or_default(),
            }
        }
        "conversation.item.input_audio_transcription.failed" => {
            let err: ApiError = match raw.error {
                Some(e) => serde_json::from_str(e.get())?,
                None => ApiError::default(),
            };
            ServerEvent::InputTranscriptionFailed {
                item_id: own(raw.item_id, "item_id")?,
                message: err.message,
            }
        }
        "conversation.item.truncated" => ServerEvent::ItemTruncated {
            item_id: own(raw.item_id, "item_id")?,
            audio_end_ms: raw.audio_end_ms.unwrap_or(0),
        },
        "input_audio_buffer.dtmf_event_received" => ServerEvent::DtmfReceived {
            digit: raw.event.ok_or_else(|| missing("event"))?,
        },
        "error" => ServerEvent::Error(serde_json::from_str(
            raw.error.ok_or_else(|| missing("error"))?.get(),
        )?),
        other => ServerEvent::Other {
            kind: other.to_owned(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_delta_borrows_its_payload() {
        let text = r#"{"type":"response.output_audio.delta","event_id":"e","response_id":"resp_1","item_id":"item_1","output_index":0,"content_index":0,"delta":"f39/fw=="}"#;
        let ev = parse(text).expect("parse");
        let ServerEvent::AudioDelta {
            delta, response_id, ..
        } = ev
        else {
            panic!("{ev:?}")
        };
        assert!(matches!(delta, Cow::Borrowed("f39/fw==")));
        assert_eq!(response_id, "resp_1");
    }

    #[test]
    fn session_updated_reports_formats_and_interrupt() {
        let text = r#"{"type":"session.updated","event_id":"e","session":{"type":"realtime","id":"sess_1","model":"gpt-realtime-2.1",
          "audio":{"input":{"format":{"type":"audio/pcmu"},"turn_detection":{"type":"server_vad","interrupt_response":false}},
                   "output":{"format":{"type":"audio/pcm","rate":24000},"voice":"marin"}}}}"#;
        let ServerEvent::SessionUpdated(info) = parse(text).expect("parse") else {
            panic!()
        };
        assert!(info.input_format.as_ref().is_some_and(AudioFormat::is_pcmu));
        assert_eq!(
            info.output_format,
            Some(AudioFormat {
                kind: "audio/pcm".into(),
                rate: Some(24000)
            })
        );
        assert_eq!(info.voice.as_deref(), Some("marin"));
        assert_eq!(info.turn_detection.as_deref(), Some("server_vad"));
        assert!(!info.interrupt_response);
    }

    #[test]
    fn response_done_usage_and_function_call_items() {
        let text = r#"{"type":"response.done","event_id":"e","response":{"id":"resp_1","status":"completed","output":[],
          "usage":{"total_tokens":1234,"input_tokens":1100,"output_tokens":134,
          "input_token_details":{"text_tokens":300,"audio_tokens":800,"image_tokens":0,"cached_tokens":640,
            "cached_tokens_details":{"text_tokens":200,"audio_tokens":440,"image_tokens":0}},
          "output_token_details":{"text_tokens":30,"audio_tokens":104}}}}"#;
        let ServerEvent::ResponseDone { usage, status, .. } = parse(text).expect("parse") else {
            panic!()
        };
        assert_eq!(status, "completed");
        let u = usage.expect("usage");
        assert_eq!(
            (u.total_tokens, u.input_tokens, u.output_tokens),
            (1234, 1100, 134)
        );
        assert_eq!(u.input_token_details.map(|d| d.cached_tokens), Some(640));
        let text = r#"{"type":"response.output_item.done","event_id":"e","response_id":"r","output_index":0,
          "item":{"id":"item_9","type":"function_call","status":"completed","name":"end_call","call_id":"call_1","arguments":"{}"}}"#;
        let ServerEvent::OutputItemDone { item, .. } = parse(text).expect("parse") else {
            panic!()
        };
        assert_eq!(item.kind, "function_call");
        assert_eq!(item.name.as_deref(), Some("end_call"));
    }

    #[test]
    fn errors_unknown_events_and_garbage() {
        let text = r#"{"type":"error","event_id":"e","error":{"type":"invalid_request_error","code":"invalid_value","message":"Audio content of 100ms is already shorter than 200ms","param":"audio_end_ms","event_id":"c1"}}"#;
        let ServerEvent::Error(e) = parse(text).expect("parse") else {
            panic!()
        };
        assert_eq!(e.code.as_deref(), Some("invalid_value"));
        assert_eq!(
            parse(r#"{"type":"rate_limits.updated","rate_limits":[]}"#).expect("parse"),
            ServerEvent::Other {
                kind: "rate_limits.updated".into()
            }
        );
        assert_eq!(
            parse(r#"{"type":"brand.new.event","x":{"y":[1,2]}}"#).expect("parse"),
            ServerEvent::Other {
                kind: "brand.new.event".into()
            }
        );
        for bad in [
            "",
            "{}",
            "[]",
            r#"{"type":"response.output_audio.delta"}"#,
            r#"{"type":"session.updated"}"#,
            r#"{"type":"session.updated","session":{"audio":{"input":{"format":"g711_ulaw"}}}}"#,
            r#"{"type":"response.done","response":{}}"#,
            r#"{"type":"error"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
