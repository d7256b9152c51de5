//! Twilio Media Streams WebSocket messages
//! (<https://www.twilio.com/docs/voice/media-streams/websocket-messages>).
//!
//! Inbound messages (Twilio -> us) parse into [`Inbound`], which borrows
//! from the frame: the base64 `payload` of a `media` message is a `&str`
//! into the original text so the bridge can forward it to the model
//! without copying or decoding it. Unknown events are kept as
//! [`Inbound::Unknown`] rather than failing, because Twilio may add events.
//!
//! Outbound messages (us -> Twilio: `media`, `mark`, `clear`) are written
//! straight into a `String` buffer: they are on the hot path and have a
//! fixed shape, so a `serde_json::Value` round trip would only cost time.

use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;

/// A message Twilio sends on a Media Stream.
#[derive(Debug, PartialEq)]
pub enum Inbound<'a> {
    /// First message: the socket is up.
    Connected,
    /// Stream metadata; sent once, before any media.
    Start(Start),
    /// 20 ms of caller audio.
    Media(Media<'a>),
    /// Echo of a mark we sent: the audio before it has played (or was cleared).
    Mark { name: String },
    /// The caller pressed a key.
    Dtmf { digit: String },
    /// The stream ended (the call hung up or the TwiML moved on).
    Stop,
    /// An event this version does not know; kept so it can be logged.
    Unknown { event: String },
}

/// The `start` message's payload.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Start {
    pub stream_sid: String,
    pub account_sid: String,
    pub call_sid: String,
    pub tracks: Vec<String>,
    /// The `<Parameter>`s of the TwiML `<Stream>`.
    pub custom_parameters: HashMap<String, String>,
    pub media_format: MediaFormat,
}

/// `start.mediaFormat`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MediaFormat {
    pub encoding: String,
    #[serde(rename = "sampleRate")]
    pub sample_rate: u32,
    pub channels: u32,
}

impl Default for MediaFormat {
    fn default() -> Self {
        MediaFormat {
            encoding: "audio/x-mulaw".into(),
            sample_rate: 8000,
            channels: 1,
        }
    }
}

impl MediaFormat {
    /// True for the only format Twilio streams today: 8 kHz mono µ-law.
    pub fn is_mulaw_8k_mono(&self) -> bool {
        self.encoding == "audio/x-mulaw" && self.sample_rate == 8000 && self.channels == 1
    }
}

/// One `media` message, borrowing its payload.
#[derive(Debug, PartialEq)]
pub struct Media<'a> {
    /// `inbound` or `outbound`.
    pub track: Cow<'a, str>,
    /// Chunk counter (sent as a string by Twilio).
    pub chunk: u64,
    /// Milliseconds since the stream started (sent as a string by Twilio).
    pub timestamp_ms: u64,
    /// Base64 µ-law audio, exactly as received.
    pub payload: Cow<'a, str>,
}

/// Why an inbound frame could not be understood.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ParseError {
    #[error("not JSON or not an object: {0}")]
    Json(String),
    #[error("`{event}` message missing or invalid field `{field}`")]
    Field {
        event: &'static str,
        field: &'static str,
    },
}

// --- raw serde shapes -----------------------------------------------------

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<RawMedia<'a>>,
    #[serde(default)]
    start: Option<RawStart>,
    #[serde(default)]
    mark: Option<RawMark>,
    #[serde(default)]
    dtmf: Option<RawDtmf>,
}

#[derive(Deserialize)]
struct RawMedia<'a> {
    #[serde(borrow, default)]
    track: Option<MaybeBorrowed<'a>>,
    #[serde(borrow, default)]
    chunk: Option<MaybeBorrowed<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<MaybeBorrowed<'a>>,
    #[serde(borrow, default)]
    payload: Option<MaybeBorrowed<'a>>,
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
struct RawStart {
    #[serde(rename = "streamSid")]
    stream_sid: Option<String>,
    #[serde(rename = "accountSid", default)]
    account_sid: String,
    #[serde(rename = "callSid", default)]
    call_sid: String,
    #[serde(default)]
    tracks: Vec<String>,
    #[serde(rename = "customParameters", default)]
    custom_parameters: HashMap<String, String>,
    #[serde(rename = "mediaFormat", default)]
    media_format: Option<MediaFormat>,
}

#[derive(Deserialize)]
struct RawMark {
    name: Option<String>,
}

#[derive(Deserialize)]
struct RawDtmf {
    digit: Option<String>,
}

/// Parse one text frame from Twilio.
pub fn parse(text: &str) -> Result<Inbound<'_>, ParseError> {
    let raw: RawFrame<'_> =
        serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))?;
    Ok(match raw.event.as_ref() {
        "media" => {
            let m = raw.media.ok_or(ParseError::Field {
                event: "media",
                field: "media",
            })?;
            let payload = m.payload.ok_or(ParseError::Field {
                event: "media",
                field: "payload",
            })?;
            let num =
                |v: Option<MaybeBorrowed<'_>>, field: &'static str| -> Result<u64, ParseError> {
                    match v {
                        None => Ok(0),
                        Some(s) => s.0.parse().map_err(|_| ParseError::Field {
                            event: "media",
                            field,
                        }),
                    }
                };
            Inbound::Media(Media {
                track: m.track.map_or(Cow::Borrowed("inbound"), |t| t.0),
                chunk: num(m.chunk, "chunk")?,
                timestamp_ms: num(m.timestamp, "timestamp")?,
                payload: payload.0,
            })
        }
        "start" => {
            let s = raw.start.ok_or(ParseError::Field {
                event: "start",
                field: "start",
            })?;
            Inbound::Start(Start {
                stream_sid: s.stream_sid.ok_or(ParseError::Field {
                    event: "start",
                    field: "streamSid",
                })?,
                account_sid: s.account_sid,
                call_sid: s.call_sid,
                tracks: s.tracks,
                custom_parameters: s.custom_parameters,
                media_format: s.media_format.unwrap_or_default(),
            })
        }
        "mark" => Inbound::Mark {
            name: raw.mark.and_then(|m| m.name).ok_or(ParseError::Field {
                event: "mark",
                field: "name",
            })?,
        },
        "dtmf" => Inbound::Dtmf {
            digit: raw.dtmf.and_then(|d| d.digit).ok_or(ParseError::Field {
                event: "dtmf",
                field: "digit",
            })?,
        },
        "connected" => Inbound::Connected,
        "stop" => Inbound::Stop,
        other => Inbound::Unknown {
            event: other.to_owned(),
        },
    })
}

// --- outbound ---------------------------------------------------------------

/// Append `{"event":"media","streamSid":…,"media":{"payload":…}}` to `out`.
/// `payload_b64` must be base64 (no escaping needed); `stream_sid` is a
/// Twilio id (`MZ…`), escaped anyway in case a peer sends something odd.
pub fn write_media(out: &mut String, stream_sid: &str, payload_b64: &str) {
    out.push_str(r#"{"event":"media","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","media":{"payload":""#);
    out.push_str(payload_b64);
    out.push_str(r#""}}"#);
}

/// Append `{"event":"mark","streamSid":…,"mark":{"name":…}}` to `out`.
pub fn write_mark(out: &mut String, stream_sid: &str, name: &str) {
    out.push_str(r#"{"event":"mark","streamSid":"#);
    push_json_str(out, stream_sid);
    out.push_str(r#","mark":{"name":"#);
    push_json_str(out, name);
    out.push_str("}}");
}

/// `{"event":"clear","streamSid":…}`: drop the audio Twilio has buffered.
pub fn clear(stream_sid: &str) -> String {
    let mut out = String::with_capacity(48 + stream_sid.len());
    out.push_str(r#"{"event":"clear","streamSid":"#);
    push_json_str(&mut out, stream_sid);
    out.push('}');
    out
}

/// Append `s` as a JSON string literal.
pub fn push_json_str(out: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b < 0x7F)
    {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Rare path: let serde_json do the escaping.
        out.push_str(&serde_json::Value::from(s).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Examples from Twilio's "Media Streams - WebSocket Messages" page.
    const CONNECTED: &str = r#"{"event": "connected","protocol": "Call","version": "1.0.0"}"#;
    const START: &str = r#"{
      "event": "start",
      "sequenceNumber": "1",
      "start": {
        "accountSid": "AC123",
        "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0",
        "callSid": "CA123",
        "tracks": ["inbound", "outbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"FirstName": "Jane", "LastName": "Doe", "RemoteParty": "Bob"}
      },
      "streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0"
    }"#;
    const MEDIA: &str = r#"{
      "event": "media",
      "sequenceNumber": "3",
      "media": {"track": "outbound", "chunk": "1", "timestamp": "5",
                "payload": "no+JhoaJjpzSHxAKBgYJDhtEopGKh4aIjZm7JhQMBwYIDBQsy5aNiIaHionGKxcNCAYHCg8cTKeRioaGh4yXsi4ZDggGBgoOGTy/lo2IhoaJjp/dIRIKBwYIDRg0wZiOiYaGiY2epCsWDQgGBwoPHVSrkoqHhoiMmLkqGA4IBgcJDhpGrZSLh4aIi5WvLBgOCQYHCQ0YOMKYjomGh4mOnc0hEwsHBggMEy7Glo2IhoeJjZ3ZIhQLBwYIDBIqzJiNiIaHio2d5yESCgcGCAwSKtCYjYiGh4mOnNwgEwoHBggMEy3FmIyIhoaJjZ3NIRMLBwYIDBM0u5iNiIaGiY2fzyMTCwcGBwwSKMqZjYiGh4mNnuAhEwoHBgcLEim5mI2IhoeJjZ3gIhILBwYIDBEsyZiMiIaHio6hxSATCgcGCAwRL7+Wi4eGh4mNnt4gEgoHBggMEzO+lo2IhoeJjZ7bHxIJBwYHDBIvxJiNiIaGiY2eyh8SCgcGCAwSKcmZjYiGh4mNnd8gEgoHBgcMEi27l42Ihw=="}
    }"#;
    const MARK: &str = r#"{"event": "mark","sequenceNumber": "4","streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0","mark": {"name": "my label"}}"#;
    const DTMF: &str = r#"{"event": "dtmf","streamSid":"MZ18ad3ab5a668481ce02b83e7395059f0","sequenceNumber":"5","dtmf": {"track":"inbound_track","digit": "1"}}"#;
    const STOP: &str = r#"{"event": "stop","sequenceNumber": "5","stop": {"accountSid": "AC123","callSid": "CA123"},"streamSid": "MZ18ad3ab5a668481ce02b83e7395059f0"}"#;

    #[test]
    fn parses_every_documented_message() {
        assert_eq!(parse(CONNECTED), Ok(Inbound::Connected));
        let Ok(Inbound::Start(s)) = parse(START) else {
            panic!("start")
        };
        assert_eq!(s.stream_sid, "MZ18ad3ab5a668481ce02b83e7395059f0");
        assert_eq!(s.call_sid, "CA123");
        assert_eq!(s.account_sid, "AC123");
        assert_eq!(s.tracks, vec!["inbound", "outbound"]);
        assert_eq!(s.custom_parameters["FirstName"], "Jane");
        assert!(s.media_format.is_mulaw_8k_mono());
        let Ok(Inbound::Media(m)) = parse(MEDIA) else {
            panic!("media")
        };
        assert_eq!(
            (m.chunk, m.timestamp_ms, m.track.as_ref()),
            (1, 5, "outbound")
        );
        assert!(m.payload.starts_with("no+JhoaJ"));
        assert!(matches!(m.payload, Cow::Borrowed(_)), "payload must borrow");
        assert_eq!(
            parse(MARK),
            Ok(Inbound::Mark {
                name: "my label".into()
            })
        );
        assert_eq!(parse(DTMF), Ok(Inbound::Dtmf { digit: "1".into() }));
        assert_eq!(parse(STOP), Ok(Inbound::Stop));
    }

    #[test]
    fn unknown_events_are_kept_not_rejected() {
        assert_eq!(
            parse(r#"{"event":"vibrate","x":1}"#),
            Ok(Inbound::Unknown {
                event: "vibrate".into()
            })
        );
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for bad in [
            "",
            "null",
            "[]",
            "{",
            r#"{"event":1}"#,
            r#"{"noevent":"media"}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{}}"#,
            r#"{"event":"media","media":{"payload":"AA==","timestamp":"-5"}}"#,
            r#"{"event":"media","media":{"payload":"AA==","chunk":"x"}}"#,
            r#"{"event":"start","start":{}}"#,
            r#"{"event":"mark","mark":{}}"#,
            r#"{"event":"dtmf"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn outbound_messages_are_valid_json_of_the_documented_shape() {
        let mut s = String::new();
        write_media(&mut s, "MZ1", "f39/fw==");
        let v: serde_json::Value = serde_json::from_str(&s).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"event":"media","streamSid":"MZ1","media":{"payload":"f39/fw=="}})
        );
        let mut s = String::new();
        write_mark(&mut s, "MZ1", "item_1:\"x\":g1");
        let v: serde_json::Value = serde_json::from_str(&s).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"event":"mark","streamSid":"MZ1","mark":{"name":"item_1:\"x\":g1"}})
        );
        let v: serde_json::Value = serde_json::from_str(&clear("MZ\u{1}")).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"event":"clear","streamSid":"MZ\u{1}"})
        );
    }
}
