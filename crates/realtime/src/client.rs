//! Client events (GA). `input_audio_buffer.append` is written by hand: it
//! is sent fifty times a second per call and its payload is already base64.

use crate::session::SessionConfig;
use serde::Serialize;

/// The client events the bridge sends.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type")]
pub enum ClientEvent {
    #[serde(rename = "session.update")]
    SessionUpdate { session: Box<SessionConfig> },
    /// Only used off the hot path; see [`write_append`].
    #[serde(rename = "input_audio_buffer.append")]
    InputAudioBufferAppend { audio: String },
    #[serde(rename = "input_audio_buffer.commit")]
    InputAudioBufferCommit,
    #[serde(rename = "conversation.item.create")]
    ConversationItemCreate { item: Item },
    #[serde(rename = "conversation.item.truncate")]
    ConversationItemTruncate {
        item_id: String,
        content_index: u32,
        audio_end_ms: u64,
    },
    #[serde(rename = "response.create")]
    ResponseCreate {
        #[serde(skip_serializing_if = "Option::is_none")]
        response: Option<ResponseParams>,
    },
    #[serde(rename = "response.cancel")]
    ResponseCancel {
        #[serde(skip_serializing_if = "Option::is_none")]
        response_id: Option<String>,
    },
}

/// Options of `response.create`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResponseParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
}

/// A conversation item the bridge creates.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Item {
    Message {
        role: &'static str,
        content: Vec<ContentPart>,
    },
    FunctionCallOutput {
        call_id: String,
        output: String,
    },
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentPart {
    InputText { text: String },
}

impl Item {
    /// A user message made of one text part (e.g. `[caller pressed 5]`).
    pub fn user_text(text: impl Into<String>) -> Self {
        Item::Message {
            role: "user",
            content: vec![ContentPart::InputText { text: text.into() }],
        }
    }
}

impl ClientEvent {
    /// Serialize to the JSON text sent on the socket.
    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys,
        // no custom serializers.
        serde_json::to_string(self).unwrap_or_else(|e| {
            tracing::error!(error = %e, "client event failed to serialize");
            String::from("{}")
        })
    }
}

/// Append `{"type":"input_audio_buffer.append","audio":"<b64>"}` to `out`.
/// `audio_b64` must already be valid base64 (it needs no escaping).
pub fn write_append(out: &mut String, audio_b64: &str) {
    out.reserve(48 + audio_b64.len());
    out.push_str(r#"{"type":"input_audio_buffer.append","audio":""#);
    out.push_str(audio_b64);
    out.push_str(r#""}"#);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_have_the_ga_shape() {
        let mut s = String::new();
        write_append(&mut s, "f39/fw==");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&s).expect("json"),
            json!({"type":"input_audio_buffer.append","audio":"f39/fw=="})
        );
        let t = ClientEvent::ConversationItemTruncate {
            item_id: "item_1".into(),
            content_index: 0,
            audio_end_ms: 1500,
        };
        assert_eq!(
            serde_json::to_value(&t).expect("json"),
            json!({"type":"conversation.item.truncate","item_id":"item_1","content_index":0,"audio_end_ms":1500})
        );
        assert_eq!(
            serde_json::to_value(ClientEvent::ResponseCancel { response_id: None }).expect("json"),
            json!({"type":"response.cancel"})
        );
        assert_eq!(
            serde_json::to_value(ClientEvent::ResponseCreate {
                response: Some(ResponseParams {
                    instructions: Some("Say hi".into())
                })
            })
            .expect("json"),
            json!({"type":"response.create","response":{"instructions":"Say hi"}})
        );
        assert_eq!(
            serde_json::to_value(ClientEvent::ConversationItemCreate {
                item: Item::user_text("[caller pressed 5]")
            })
            .expect("json"),
            json!({"type":"conversation.item.create","item":{"type":"message","role":"user",
                   "content":[{"type":"input_text","text":"[caller pressed 5]"}]}})
        );
        assert_eq!(
            serde_json::to_value(ClientEvent::ConversationItemCreate {
                item: Item::FunctionCallOutput {
                    call_id: "c1".into(),
                    output: "{}".into()
                }
            })
            .expect("json"),
            json!({"type":"conversation.item.create","item":{"type":"function_call_output","call_id":"c1","output":"{}"}})
        );
    }
}
