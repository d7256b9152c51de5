//! The store's writer: every call event from the hub, written in order by
//! one task, off the audio path.

use crate::hub::{CallEvent, CallEventKind, Speaker};
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, warn};
use voxbridge_store::{BatchWrite, Store};

/// Events written in one transaction, at most.
const BATCH_MAX: usize = 256;
/// How long the writer lets events gather before a transaction. Hundreds of calls produce
/// hundreds of events a second (transcripts, usage, turns); one commit each cost the
/// SQLite writer more than the audio of those calls. Events reach the store this much
/// later, in the same order; live subscribers get them from the hub at once.
const LINGER: Duration = Duration::from_millis(20);

/// Write events until the hub is gone.
pub async fn run_writer(store: Store, mut rx: UnboundedReceiver<CallEvent>) {
    let mut batch: Vec<CallEvent> = Vec::with_capacity(BATCH_MAX);
    while rx.recv_many(&mut batch, BATCH_MAX).await > 0 {
        tokio::time::sleep(LINGER).await;
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(ev) => batch.push(ev),
                Err(_) => break,
            }
        }
        write_all(&store, &batch).await;
        batch.clear();
    }
}

/// Write a batch in order: runs of common events in one transaction each, the others
/// (call state changes, tool calls…) one by one.
async fn write_all(store: &Store, batch: &[CallEvent]) {
    let mut run = Run::default();
    for ev in batch {
        match batch_write(ev) {
            Some(w) => {
                run.events.push(ev);
                run.writes.push(w);
            }
            None => {
                run.write(store).await;
                write_one(store, ev).await;
            }
        }
    }
    run.write(store).await;
}

/// Consecutive batchable events and their writes.
#[derive(Default)]
struct Run<'a> {
    events: Vec<&'a CallEvent>,
    writes: Vec<BatchWrite<'a>>,
}

impl Run<'_> {
    async fn write(&mut self, store: &Store) {
        if self.writes.is_empty() {
            return;
        }
        if let Err(e) = store.write_batch(&self.writes).await {
            match self.events.as_slice() {
                [ev] => report(&ev.call_id, e),
                events => {
                    // Nothing was written: one by one, so one bad event loses only itself.
                    debug!(error = %e, events = events.len(), "batch not written; writing one by one");
                    for ev in events {
                        write_one(store, ev).await;
                    }
                }
            }
        }
        self.events.clear();
        self.writes.clear();
    }
}

async fn write_one(store: &Store, ev: &CallEvent) {
    let written = match batch_write(ev) {
        Some(w) => store.write_batch(&[w]).await,
        None => write(store, ev).await,
    };
    if let Err(e) = written {
        report(&ev.call_id, e);
    }
}

fn report(call_id: &str, e: voxbridge_store::StoreError) {
    match e {
        // A call the store has no row for (no lookup first: that would
        // double the queries of every event).
        voxbridge_store::StoreError::NotFound => {
            debug!(call_id, "event of a call not in the store")
        }
        // Log and go on: one bad event must not stop the writer.
        e => warn!(call_id, error = %e, "could not persist call event"),
    }
}

/// The batchable form of an event: transcripts, usage, and the kinds stored only as a
/// generic call event. `None` for the kinds with writes of their own.
fn batch_write(ev: &CallEvent) -> Option<BatchWrite<'_>> {
    let call_id = ev.call_id.as_str();
    let at_ms = ev.at_ms as i64;
    match &ev.kind {
        CallEventKind::Transcript { speaker, text } => Some(BatchWrite::Transcript {
            call_id,
            speaker: match speaker {
                Speaker::Caller => voxbridge_store::Speaker::Caller,
                Speaker::Agent => voxbridge_store::Speaker::Agent,
            },
            text,
            start_ms: None,
            end_ms: None,
            at_ms,
        }),
        CallEventKind::Usage {
            input_tokens,
            output_tokens,
            cached_tokens,
        } => Some(BatchWrite::Usage {
            call_id,
            input: *input_tokens as i64,
            output: *output_tokens as i64,
            cached: *cached_tokens as i64,
        }),
        CallEventKind::StreamStarted { .. }
        | CallEventKind::Ended { .. }
        | CallEventKind::ToolCall { .. }
        | CallEventKind::SurveyAnswer { .. }
        | CallEventKind::OptedOut { .. }
        | CallEventKind::AnsweredBy { .. } => None,
        kind => {
            let data = serde_json::to_value(kind).ok()?;
            Some(BatchWrite::Event {
                call_id,
                kind: type_of(&data),
                data: data.to_string(),
                at_ms,
            })
        }
    }
}

/// The `type` of a serialized event (its generic row's kind).
fn type_of(data: &serde_json::Value) -> String {
    data["type"].as_str().unwrap_or("event").to_owned()
}

/// The kinds with writes of their own, then their generic row.
async fn write(store: &Store, ev: &CallEvent) -> Result<(), voxbridge_store::StoreError> {
    let at = ev.at_ms as i64;
    let id = ev.call_id.as_str();
    match &ev.kind {
        CallEventKind::StreamStarted { stream_sid, .. } => {
            store.set_stream_sid(id, stream_sid).await?;
        }
        CallEventKind::Ended { reason } => {
            store.finish_call(id, Some(reason), at, None).await?;
        }
        CallEventKind::ToolCall {
            name,
            arguments,
            output,
            ok,
            duration_ms,
        } => {
            store
                .add_tool_call(
                    id,
                    &voxbridge_store::NewToolCall {
                        name: name.clone(),
                        arguments: arguments.clone(),
                        result: output.clone(),
                        ok: *ok,
                        duration_ms: *duration_ms as i64,
                        at_ms: at,
                    },
                )
                .await?;
        }
        CallEventKind::SurveyAnswer { question, answer } => {
            store.add_survey_response(id, question, answer, at).await?;
        }
        CallEventKind::OptedOut { number } => {
            store
                .add_dnc(number, Some("asked on the call"), "agent", at)
                .await?;
        }
        CallEventKind::AnsweredBy { answered_by, .. } => {
            store.set_answered_by(id, answered_by).await?;
        }
        _ => {}
    }
    let data = serde_json::to_value(&ev.kind).unwrap_or_default();
    store.add_event(id, &type_of(&data), &data, at).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxbridge_store::NewCall;

    fn ev(call_id: &str, at_ms: u64, kind: CallEventKind) -> CallEvent {
        CallEvent {
            call_id: call_id.into(),
            at_ms,
            kind,
        }
    }

    async fn store_with_call(id: &str) -> Store {
        let store = Store::connect("sqlite::memory:").await.expect("store");
        store
            .create_call(&NewCall {
                id: id.into(),
                direction: "inbound".into(),
                from_number: "+14155550100".into(),
                to_number: "+14155550199".into(),
                agent: "default".into(),
                task: None,
                status: "in_progress".into(),
                api_key_id: None,
                idempotency_key: None,
                twilio_call_sid: None,
                created_at_ms: 1,
            })
            .await
            .expect("call");
        store
    }

    fn line(speaker: Speaker, text: &str) -> CallEventKind {
        CallEventKind::Transcript {
            speaker,
            text: text.into(),
        }
    }

    fn usage(n: u64) -> CallEventKind {
        CallEventKind::Usage {
            input_tokens: n,
            output_tokens: 2 * n,
            cached_tokens: 0,
        }
    }

    fn turn(ms: u64) -> CallEventKind {
        CallEventKind::Turn {
            model_ms: ms,
            heard_ms: Some(ms + 25),
        }
    }

    #[tokio::test]
    async fn a_batch_is_written_in_order_with_the_other_kinds_between() {
        let store = store_with_call("c1").await;
        let batch = vec![
            ev("c1", 10, line(Speaker::Caller, "hello")),
            ev("c1", 11, turn(150)),
            ev("c1", 12, line(Speaker::Agent, "hi there")),
            ev("c1", 13, usage(5)),
            ev(
                "c1",
                14,
                CallEventKind::StreamStarted {
                    stream_sid: "MZ1".into(),
                    call_sid: "CA1".into(),
                },
            ),
            ev("c1", 15, turn(160)),
            ev("c1", 16, usage(7)),
            ev("c1", 17, line(Speaker::Caller, "bye")),
        ];
        write_all(&store, &batch).await;
        let lines: Vec<(String, String)> = store
            .transcript("c1")
            .await
            .expect("transcript")
            .into_iter()
            .map(|t| (t.speaker, t.text))
            .collect();
        assert_eq!(
            lines,
            [
                ("caller".to_owned(), "hello".to_owned()),
                ("agent".into(), "hi there".into()),
                ("caller".into(), "bye".into()),
            ]
        );
        let events = store.events("c1").await.expect("events");
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["turn", "stream_started", "turn"]);
        assert_eq!(events[2].data["model_ms"], 160);
        assert_eq!(events[2].at_ms, 15);
        let call = store.get_call("c1").await.expect("get").expect("call");
        assert_eq!((call.input_tokens, call.output_tokens), (12, 24));
    }

    #[tokio::test]
    async fn an_event_of_an_unknown_call_loses_only_itself() {
        let store = store_with_call("c1").await;
        let batch = vec![
            ev("c1", 10, line(Speaker::Caller, "one")),
            ev("nope", 11, line(Speaker::Caller, "lost")),
            ev("c1", 12, turn(100)),
            ev("nope", 13, usage(3)),
            ev("c1", 14, line(Speaker::Agent, "two")),
            ev("c1", 15, usage(4)),
        ];
        write_all(&store, &batch).await;
        let texts: Vec<String> = store
            .transcript("c1")
            .await
            .expect("transcript")
            .into_iter()
            .map(|t| t.text)
            .collect();
        assert_eq!(texts, ["one", "two"]);
        assert_eq!(store.events("c1").await.expect("events").len(), 1);
        let call = store.get_call("c1").await.expect("get").expect("call");
        assert_eq!(call.input_tokens, 4);
        assert!(store.transcript("nope").await.expect("none").is_empty());
    }

    #[tokio::test]
    async fn the_writer_drains_everything_before_it_stops() {
        let store = store_with_call("c1").await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..600u64 {
            let _ = tx.send(ev("c1", i, line(Speaker::Caller, &format!("line {i}"))));
        }
        drop(tx);
        run_writer(store.clone(), rx).await;
        let items = store.transcript("c1").await.expect("transcript");
        assert_eq!(items.len(), 600, "batches of at most {BATCH_MAX}");
        assert!(
            items
                .iter()
                .enumerate()
                .all(|(i, t)| t.text == format!("line {i}"))
        );
    }
}
