//! `session.update` for a phone call (GA).

use serde::{Deserialize, Serialize};

/// An audio format object (`{"type":"audio/pcmu"}`; PCM needs `rate`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioFormat {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u32>,
}

impl AudioFormat {
    /// G.711 µ-law, 8 kHz: what Twilio streams.
    pub fn pcmu() -> Self {
        AudioFormat {
            kind: "audio/pcmu".into(),
            rate: None,
        }
    }
    /// True when this is `audio/pcmu`.
    pub fn is_pcmu(&self) -> bool {
        self.kind == "audio/pcmu"
    }
}

/// Turn detection. `None` in [`AudioInput::turn_detection`] means manual turns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TurnDetection {
    ServerVad {
        threshold: f64,
        prefix_padding_ms: u32,
        silence_duration_ms: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        idle_timeout_ms: Option<u32>,
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

impl TurnDetection {
    /// Whether the server cancels its own response when the caller speaks.
    pub fn interrupt_response(&self) -> bool {
        match self {
            TurnDetection::ServerVad {
                interrupt_response, ..
            }
            | TurnDetection::SemanticVad {
                interrupt_response, ..
            } => *interrupt_response,
        }
    }
    /// The same turn detection with `interrupt_response` replaced.
    pub fn with_interrupt_response(&self, value: bool) -> Self {
        let mut t = self.clone();
        match &mut t {
            TurnDetection::ServerVad {
                interrupt_response, ..
            }
            | TurnDetection::SemanticVad {
                interrupt_response, ..
            } => *interrupt_response = value,
        }
        t
    }
}

/// `audio.input.transcription`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transcription {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// `audio.input.noise_reduction`: `near_field` or `far_field`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoiseReduction {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioInput {
    pub format: AudioFormat,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcription: Option<Transcription>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noise_reduction: Option<NoiseReduction>,
    /// Always serialized: `null` selects manual turns.
    pub turn_detection: Option<TurnDetection>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioOutput {
    pub format: AudioFormat,
    pub voice: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioConfig {
    pub input: AudioInput,
    pub output: AudioOutput,
}

/// The `session` object of `session.update`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionConfig {
    /// Always `"realtime"`: the GA API rejects a session without it.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub model: String,
    pub instructions: String,
    pub output_modalities: Vec<String>,
    pub audio: AudioConfig,
    /// Function tools the model may call (omitted when empty).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<crate::calls::FunctionTool>,
}

impl SessionConfig {
    /// A phone session: µ-law both ways, whatever else is chosen.
    pub fn phone(
        model: impl Into<String>,
        instructions: impl Into<String>,
        voice: impl Into<String>,
        turn_detection: Option<TurnDetection>,
        transcription: Option<Transcription>,
        noise_reduction: Option<NoiseReduction>,
    ) -> Self {
        SessionConfig {
            kind: "realtime",
            model: model.into(),
            instructions: instructions.into(),
            output_modalities: vec!["audio".into()],
            audio: AudioConfig {
                input: AudioInput {
                    format: AudioFormat::pcmu(),
                    transcription,
                    noise_reduction,
                    turn_detection,
                },
                output: AudioOutput {
                    format: AudioFormat::pcmu(),
                    voice: voice.into(),
                },
            },
            tools: Vec::new(),
        }
    }

    /// The same session with these function tools.
    pub fn with_tools(mut self, tools: Vec<crate::calls::FunctionTool>) -> Self {
        self.tools = tools;
        self
    }
}

/// Voices the GA API documents; anything else is refused at config load
/// (the SDK accepts any string, and e.g. `nova` plays noise over Twilio).
pub const VOICES: &[&str] = &[
    "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_session_has_the_ga_shape() {
        let s = SessionConfig::phone(
            "gpt-realtime-2.1",
            "Be brief.",
            "marin",
            Some(TurnDetection::ServerVad {
                threshold: 0.5,
                prefix_padding_ms: 300,
                silence_duration_ms: 500,
                idle_timeout_ms: None,
                create_response: true,
                interrupt_response: true,
            }),
            Some(Transcription {
                model: "gpt-4o-mini-transcribe".into(),
                language: None,
            }),
            None,
        );
        let v = serde_json::to_value(&s).expect("serialize");
        assert_eq!(v["type"], "realtime");
        assert_eq!(
            v["audio"]["input"]["format"],
            serde_json::json!({"type":"audio/pcmu"})
        );
        assert_eq!(
            v["audio"]["output"]["format"],
            serde_json::json!({"type":"audio/pcmu"})
        );
        assert_eq!(v["audio"]["input"]["turn_detection"]["type"], "server_vad");
        assert_eq!(v["audio"]["output"]["voice"], "marin");
        assert!(v["audio"]["input"].get("noise_reduction").is_none());
        let manual = SessionConfig::phone("m", "i", "marin", None, None, None);
        let v = serde_json::to_value(&manual).expect("serialize");
        assert!(v["audio"]["input"]["turn_detection"].is_null());
        let sem = TurnDetection::SemanticVad {
            eagerness: "low".into(),
            create_response: true,
            interrupt_response: false,
        };
        let v = serde_json::to_value(&sem).expect("serialize");
        assert_eq!(v["type"], "semantic_vad");
        assert!(!sem.interrupt_response());
        assert!(sem.with_interrupt_response(true).interrupt_response());
    }
}
