//! In-process event hub: every call publishes what happens on it here
//! (status, transcripts, DTMF, barge-ins, timings, the end). The CLI's demo
//! prints from it, the store persists it and `/v1/events` streams it.
//!
//! With several nodes on one PostgreSQL, [`crate::cluster`] forwards what is
//! published here to the other nodes and brings theirs back through
//! [`EventHub::publish_remote`] (live only: each node stores its own events).

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{broadcast, mpsc};

/// One thing that happened on a call. `Deserialize` because events of other
/// nodes arrive as JSON (see [`crate::cluster`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallEvent {
    pub call_id: String,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    #[serde(flatten)]
    pub kind: CallEventKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEventKind {
    /// The voice webhook was answered (TwiML returned).
    Answered { from: String, to: String },
    /// The model socket is open and its session confirmed µ-law.
    ModelReady { model: String, connect_ms: u64 },
    /// Twilio's `start` arrived on the media socket.
    StreamStarted {
        stream_sid: String,
        call_sid: String,
    },
    /// A final transcript line.
    Transcript { speaker: Speaker, text: String },
    /// The caller pressed a key.
    Dtmf { digit: String },
    /// The caller interrupted the agent.
    BargeIn {
        truncated_ms: Option<u64>,
        dropped_ms: u64,
    },
    /// Latency of one turn as the caller feels it.
    Turn {
        /// Caller stopped speaking -> first agent audio from the model.
        model_ms: u64,
        /// Caller stopped speaking -> Twilio confirmed the first audio played.
        heard_ms: Option<u64>,
    },
    /// Token usage of one response.
    Usage {
        input_tokens: u64,
        output_tokens: u64,
        cached_tokens: u64,
    },
    /// A problem worth showing (model error event, rejected truncate…).
    Warning { message: String },
    /// Twilio reported a call status (queued, ringing, in-progress, completed…).
    Status { status: String },
    /// The call's recording is available.
    Recording { sid: String, url: String },
    /// The agent called a tool (every call is stored with its result).
    ToolCall {
        name: String,
        arguments: String,
        output: String,
        ok: bool,
        duration_ms: u64,
    },
    /// The agent recorded a survey answer.
    SurveyAnswer { question: String, answer: String },
    /// The callee asked not to be called again: the number goes on the do-not-call list.
    OptedOut { number: String },
    /// Who answered: Twilio's machine detection or the agent's own judgement.
    AnsweredBy { answered_by: String, source: String },
    /// The call was handed to a person.
    Transferred { to: String, warm: bool },
    /// The call is over.
    Ended { reason: String },
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    Caller,
    Agent,
}

/// Cheap to clone; publishing never blocks. Live subscribers that fall
/// behind skip events; the store's writer gets every event through its own
/// unbounded queue (events are a few per second per call, never per frame).
#[derive(Debug, Clone)]
pub struct EventHub {
    tx: broadcast::Sender<CallEvent>,
    persist: Option<tokio::sync::mpsc::UnboundedSender<CallEvent>>,
    /// Towards the other nodes (bounded: a slow or unreachable database must
    /// never hold up a call; when full the event is dropped for them, with a warning).
    cluster: Option<mpsc::Sender<CallEvent>>,
    /// Events the cluster queue had no room for, since start (shared by clones).
    cluster_dropped: Arc<AtomicU64>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl EventHub {
    pub fn new(capacity: usize) -> Self {
        EventHub {
            tx: broadcast::channel(capacity).0,
            persist: None,
            cluster: None,
            cluster_dropped: Arc::default(),
        }
    }

    /// A hub whose events are also queued, losslessly, for the store.
    pub fn with_persistence(
        capacity: usize,
    ) -> (Self, tokio::sync::mpsc::UnboundedReceiver<CallEvent>) {
        let (ptx, prx) = tokio::sync::mpsc::unbounded_channel();
        (
            EventHub {
                tx: broadcast::channel(capacity).0,
                persist: Some(ptx),
                cluster: None,
                cluster_dropped: Arc::default(),
            },
            prx,
        )
    }

    /// Also forward every event published from now on to `tx` (the cluster
    /// notifier), without ever waiting for room. Clones made afterwards share it.
    pub fn set_cluster(&mut self, tx: mpsc::Sender<CallEvent>) {
        self.cluster = Some(tx);
    }

    /// Events dropped because the cluster queue was full.
    pub fn cluster_dropped(&self) -> u64 {
        self.cluster_dropped.load(Ordering::Relaxed)
    }

    /// An event of another node: to the live subscribers only; not stored
    /// (the origin node stores it) and not forwarded again.
    pub fn publish_remote(&self, event: CallEvent) {
        let _ = self.tx.send(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<CallEvent> {
        self.tx.subscribe()
    }

    pub fn publish(&self, call_id: &str, kind: CallEventKind) {
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let event = CallEvent {
            call_id: call_id.to_owned(),
            at_ms,
            kind,
        };
        if let Some(p) = &self.persist {
            let _ = p.send(event.clone());
        }
        if let Some(c) = &self.cluster {
            match c.try_send(event.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    let n = self.cluster_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    // The first drop, then every 100th: a stalled database must not
                    // flood the log too.
                    if n == 1 || n.is_multiple_of(100) {
                        tracing::warn!(
                            call_id = %ev.call_id,
                            dropped_total = n,
                            "cluster event queue full: event not sent to the other nodes"
                        );
                    }
                }
                // The notifier is gone (shutting down): nothing to tell.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        // No subscribers is fine.
        let _ = self.tx.send(event);
    }
}
