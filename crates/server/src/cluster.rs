//! Live call events across nodes, over the shared PostgreSQL (LISTEN/NOTIFY).
//!
//! Several `voxbridge serve` nodes point at one PostgreSQL; a client watching
//! `/v1/events` on node A must see the calls that run on node B. Each node:
//!
//! * sends every event published on its hub with
//!   `SELECT pg_notify('voxbridge_events', payload)`, payload
//!   `{"node": <NODE_ID>, "instance": <random per process>, "event": <CallEvent>}`
//!   (a node skips its own notifications by `instance`, so two nodes started
//!   with the same `NODE_ID` by mistake still see each other's events),
//!   from one background task fed by a
//!   bounded queue ([`QUEUE_CAPACITY`]): publishing never waits, a full queue
//!   drops the event for the other nodes (with a warning);
//! * keeps every payload within PostgreSQL's limit (shorter than 8000 bytes) by
//!   cutting the event's free text (transcript, warning, end reason) and
//!   marking the cut with `…` ([`encode_notification`]);
//! * LISTENs on the same channel and re-publishes the events of the *other*
//!   nodes to its live subscribers only ([`EventHub::publish_remote`]): the
//!   origin node has stored them already.
//!
//! Delivery is best effort, as NOTIFY is: what is sent while a listener is
//! reconnecting is lost to it (the loss is logged). The stored events stay the
//! record; this is the live view. Nothing of this runs on SQLite.

use crate::hub::{CallEvent, CallEventKind, EventHub};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// The NOTIFY channel every node sends on and listens to.
pub const CHANNEL: &str = "voxbridge_events";
/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more (default build).
pub const MAX_PAYLOAD_BYTES: usize = 7999;
/// Events waiting to be sent to the other nodes; beyond this they are dropped.
pub const QUEUE_CAPACITY: usize = 4096;
/// Marks text cut to fit the payload limit.
pub const CUT_MARK: char = '…';

const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Why an event cannot be sent to the other nodes.
#[derive(Debug, thiserror::Error)]
pub enum NotifyPayloadError {
    #[error("event is not serializable: {0}")]
    Json(#[from] serde_json::Error),
    /// Even with its free text cut, the event does not fit (e.g. a huge call id).
    #[error(
        "event needs {bytes} bytes, more than the {MAX_PAYLOAD_BYTES} a NOTIFY payload may have"
    )]
    TooLarge { bytes: usize },
}

/// The running cluster tasks of one node; dropping it stops them.
#[derive(Debug)]
pub struct Cluster {
    /// Random per process, carried by its notifications so that it skips its own.
    instance: Arc<str>,
    /// True while the listener holds a connection with `LISTEN` done: events of
    /// other nodes reach this node (tests and health checks wait on it).
    listening: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Cluster {
    /// Start the notifier and the listener on `pool`, and make `hub` forward
    /// what is published on it (clones of `hub` made afterwards included).
    /// Must run inside a Tokio runtime.
    /// `node_id` is the node's name (`NODE_ID`), shown to the other nodes.
    pub fn start(pool: PgPool, node_id: &str, hub: &mut EventHub) -> Cluster {
        let instance: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let from = Origin {
            node: node_id.to_owned(),
            instance: instance.to_string(),
        };
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        hub.set_cluster(tx);
        let listening = Arc::new(AtomicBool::new(false));
        let tasks = vec![
            tokio::spawn(run_notifier(pool.clone(), from, rx)),
            tokio::spawn(run_listener(
                pool,
                instance.clone(),
                hub.clone(),
                listening.clone(),
            )),
        ];
        info!(node_id, %instance, channel = CHANNEL, "cluster events on PostgreSQL");
        Cluster {
            instance,
            listening,
            tasks,
        }
    }

    /// This process's random instance id (in every notification it sends).
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Whether events of other nodes are being received right now.
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Who sent a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The sender's `NODE_ID` (for people reading logs and payloads).
    pub node: String,
    /// Random per process: what a node recognises its own notifications by.
    pub instance: String,
}

#[derive(Serialize)]
struct Outgoing<'a> {
    #[serde(flatten)]
    from: &'a Origin,
    event: &'a CallEvent,
}

#[derive(Deserialize)]
struct Incoming {
    #[serde(flatten)]
    from: Origin,
    event: CallEvent,
}

/// The NOTIFY payload of `event` from `from`, at most [`MAX_PAYLOAD_BYTES`]
/// bytes: the event's free text (transcript, warning, end reason) is cut at a
/// character boundary and ends with [`CUT_MARK`] when it would not fit.
pub fn encode_notification(from: &Origin, event: &CallEvent) -> Result<String, NotifyPayloadError> {
    let mut cut: Option<CallEvent> = None;
    // One cut normally suffices; the loop only guards against a miscount.
    for _ in 0..8 {
        let payload = serde_json::to_string(&Outgoing {
            from,
            event: cut.as_ref().unwrap_or(event),
        })?;
        if payload.len() <= MAX_PAYLOAD_BYTES {
            return Ok(payload);
        }
        let excess = payload.len() - MAX_PAYLOAD_BYTES;
        let ev = cut.get_or_insert_with(|| event.clone());
        let shortened = free_text(&mut ev.kind).is_some_and(|t| cut_text(t, excess));
        if !shortened {
            return Err(NotifyPayloadError::TooLarge {
                bytes: payload.len(),
            });
        }
    }
    let bytes = serde_json::to_string(&Outgoing {
        from,
        event: cut.as_ref().unwrap_or(event),
    })?
    .len();
    Err(NotifyPayloadError::TooLarge { bytes })
}

/// A notification's origin and event.
pub fn decode_notification(payload: &str) -> Result<(Origin, CallEvent), serde_json::Error> {
    let n: Incoming = serde_json::from_str(payload)?;
    Ok((n.from, n.event))
}

/// The unbounded text of an event, if it has one.
fn free_text(kind: &mut CallEventKind) -> Option<&mut String> {
    match kind {
        CallEventKind::Transcript { text, .. } => Some(text),
        CallEventKind::Warning { message } => Some(message),
        CallEventKind::Ended { reason } => Some(reason),
        _ => None,
    }
}

/// Bytes `c` takes inside a JSON string as serde_json writes it.
fn json_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\u{8}' | '\u{c}' | '\n' | '\r' | '\t' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Remove characters from the end of `text` worth at least `excess` encoded
/// bytes plus the mark, then append the mark. False when there is nothing to cut.
fn cut_text(text: &mut String, excess: usize) -> bool {
    let need = excess + json_len(CUT_MARK);
    let mut removed = 0;
    let mut keep = text.len();
    for (i, c) in text.char_indices().rev() {
        if removed >= need {
            break;
        }
        removed += json_len(c);
        keep = i;
    }
    if removed < need {
        return false;
    }
    text.truncate(keep);
    text.push(CUT_MARK);
    true
}

/// Send what the hub publishes, in order, until the hub is gone.
async fn run_notifier(pool: PgPool, from: Origin, mut rx: mpsc::Receiver<CallEvent>) {
    let mut failing = false;
    while let Some(event) = rx.recv().await {
        let payload = match encode_notification(&from, &event) {
            Ok(p) => p,
            Err(e) => {
                warn!(call_id = %event.call_id, error = %e, "event not sent to the other nodes");
                continue;
            }
        };
        let sent = sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&payload)
            .execute(&pool)
            .await;
        match sent {
            Ok(_) => {
                if failing {
                    info!("cluster events are sent to the other nodes again");
                    failing = false;
                }
            }
            Err(sqlx::Error::PoolClosed) => return,
            // Warn once per outage, not once per event.
            Err(e) if !failing => {
                warn!(error = %e, "could not send an event to the other nodes");
                failing = true;
            }
            Err(e) => debug!(error = %e, "could not send an event to the other nodes"),
        }
    }
}

/// Receive the other nodes' events, reconnecting (with backoff) on errors,
/// until the pool is closed.
async fn run_listener(pool: PgPool, instance: Arc<str>, hub: EventHub, listening: Arc<AtomicBool>) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let result = listen(&pool, &instance, &hub, &listening, &mut backoff).await;
        listening.store(false, Ordering::Relaxed);
        match result {
            Ok(()) | Err(sqlx::Error::PoolClosed) => return,
            Err(e) => {
                warn!(
                    error = %e,
                    retry_in_ms = backoff.as_millis() as u64,
                    "cluster listener failed; events of other nodes are missed until it reconnects"
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(RECONNECT_MAX);
            }
        }
    }
}

async fn listen(
    pool: &PgPool,
    instance: &str,
    hub: &EventHub,
    listening: &AtomicBool,
    backoff: &mut Duration,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(CHANNEL).await?;
    listening.store(true, Ordering::Relaxed);
    *backoff = RECONNECT_MIN;
    debug!(channel = CHANNEL, "cluster listener ready");
    loop {
        match listener.try_recv().await? {
            Some(n) => match decode_notification(n.payload()) {
                Ok((origin, _)) if origin.instance == instance => {}
                Ok((_, event)) => hub.publish_remote(event),
                Err(e) => warn!(error = %e, "ignoring a malformed cluster notification"),
            },
            // PgListener has reconnected and listens again by now.
            None => warn!(
                "cluster listener lost its connection and reconnected; \
                 events of other nodes sent meanwhile were missed"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Speaker;

    fn event(kind: CallEventKind) -> CallEvent {
        CallEvent {
            call_id: "call-1".into(),
            at_ms: 1_700_000_000_000,
            kind,
        }
    }

    fn origin() -> Origin {
        Origin {
            node: "node-a".into(),
            instance: "0123456789abcdef0123456789abcdef".into(),
        }
    }

    fn transcript(text: String) -> CallEvent {
        event(CallEventKind::Transcript {
            speaker: Speaker::Agent,
            text,
        })
    }

    #[test]
    fn every_event_kind_round_trips() {
        let kinds = vec![
            CallEventKind::Answered {
                from: "+1".into(),
                to: "+2".into(),
            },
            CallEventKind::ModelReady {
                model: "m".into(),
                connect_ms: 12,
            },
            CallEventKind::StreamStarted {
                stream_sid: "MZ1".into(),
                call_sid: "CA1".into(),
            },
            CallEventKind::Transcript {
                speaker: Speaker::Caller,
                text: "hi \"there\"\n".into(),
            },
            CallEventKind::Dtmf { digit: "5".into() },
            CallEventKind::BargeIn {
                truncated_ms: None,
                dropped_ms: 40,
            },
            CallEventKind::BargeIn {
                truncated_ms: Some(u64::MAX),
                dropped_ms: 0,
            },
            CallEventKind::Turn {
                model_ms: 300,
                heard_ms: Some(420),
            },
            CallEventKind::Usage {
                input_tokens: 1,
                output_tokens: 2,
                cached_tokens: 3,
            },
            CallEventKind::Warning {
                message: "w".into(),
            },
            CallEventKind::Status {
                status: "ringing".into(),
            },
            CallEventKind::Recording {
                sid: "RE1".into(),
                url: "https://x".into(),
            },
            CallEventKind::Ended {
                reason: "hangup".into(),
            },
        ];
        for kind in kinds {
            let ev = event(kind);
            let payload = encode_notification(&origin(), &ev).expect("encode");
            let (from, back) = decode_notification(&payload).expect("decode");
            assert_eq!(from, origin());
            assert_eq!(back, ev, "{payload}");
        }
    }

    #[test]
    fn oversized_transcripts_are_cut_to_fit() {
        // ASCII, multi-byte characters and characters JSON escapes, around the limit.
        let samples = [
            "a".repeat(20_000),
            "é".repeat(9_000),
            "\"\n\u{1}".repeat(3_000),
            "日本語🎉".repeat(2_000),
            "b".repeat(MAX_PAYLOAD_BYTES),
        ];
        for text in samples {
            let payload = encode_notification(&origin(), &transcript(text.clone())).expect("fits");
            assert!(payload.len() <= MAX_PAYLOAD_BYTES, "{}", payload.len());
            // Not cut much more than needed (at most one escaped character extra).
            assert!(payload.len() + 8 >= MAX_PAYLOAD_BYTES, "{}", payload.len());
            let (_, back) = decode_notification(&payload).expect("valid JSON");
            let CallEventKind::Transcript { text: cut, .. } = back.kind else {
                panic!("kind changed: {payload}");
            };
            let kept = cut.strip_suffix(CUT_MARK).expect("marked as cut");
            assert!(text.starts_with(kept));
        }
        // Text that fits is left alone.
        let small = transcript("short".into());
        let payload = encode_notification(&origin(), &small).expect("fits");
        assert_eq!(decode_notification(&payload).expect("decode").1, small);
        // Warnings and end reasons are cut too.
        let warning = event(CallEventKind::Warning {
            message: "w".repeat(10_000),
        });
        assert!(
            encode_notification(&origin(), &warning)
                .expect("fits")
                .len()
                <= MAX_PAYLOAD_BYTES
        );
    }

    #[test]
    fn what_cannot_be_cut_is_an_error_not_a_panic() {
        let mut ev = event(CallEventKind::Dtmf { digit: "1".into() });
        ev.call_id = "x".repeat(10_000);
        let err = encode_notification(&origin(), &ev).expect_err("too large");
        assert!(matches!(err, NotifyPayloadError::TooLarge { .. }), "{err}");
        let mut ev = transcript("y".repeat(100));
        ev.call_id = "x".repeat(10_000);
        assert!(encode_notification(&origin(), &ev).is_err());
        assert!(decode_notification("{\"node\":1}").is_err());
        assert!(decode_notification("not json").is_err());
    }

    #[tokio::test]
    async fn publishing_never_waits_for_the_cluster_queue() {
        let (mut hub, mut stored) = EventHub::with_persistence(64);
        let (tx, mut rx) = mpsc::channel(2);
        hub.set_cluster(tx);
        let mut live = hub.subscribe();
        for i in 0..10 {
            hub.publish(
                "c",
                CallEventKind::Dtmf {
                    digit: i.to_string(),
                },
            );
        }
        assert_eq!(hub.cluster_dropped(), 8);
        for _ in 0..10 {
            assert!(live.try_recv().is_ok());
            assert!(stored.try_recv().is_ok());
        }
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());

        // Remote events: live only, neither stored nor forwarded again.
        hub.publish_remote(event(CallEventKind::Dtmf { digit: "9".into() }));
        assert_eq!(
            live.try_recv().expect("live").kind,
            CallEventKind::Dtmf { digit: "9".into() }
        );
        assert!(stored.try_recv().is_err());
        assert!(rx.try_recv().is_err());
    }
}
