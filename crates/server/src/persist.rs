//! The store's writer: every call event from the hub, written in order by
//! one task, off the audio path.

use crate::hub::{CallEvent, CallEventKind, Speaker};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::{debug, warn};
use voxbridge_store::Store;

/// Write events until the hub is gone.
pub async fn run_writer(store: Store, mut rx: UnboundedReceiver<CallEvent>) {
    while let Some(ev) = rx.recv().await {
        match write(&store, &ev).await {
            Ok(()) => {}
            // A call the store has no row for (no lookup first: that would
            // double the queries of every event).
            Err(voxbridge_store::StoreError::NotFound) => {
                debug!(call_id = %ev.call_id, "event of a call not in the store")
            }
            // Log and go on: one bad event must not stop the writer.
            Err(e) => warn!(call_id = %ev.call_id, error = %e, "could not persist call event"),
        }
    }
}

async fn write(store: &Store, ev: &CallEvent) -> Result<(), voxbridge_store::StoreError> {
    let at = ev.at_ms as i64;
    let id = ev.call_id.as_str();
    match &ev.kind {
        CallEventKind::Transcript { speaker, text } => {
            let who = match speaker {
                Speaker::Caller => "caller",
                Speaker::Agent => "agent",
            };
            store.add_transcript(id, who, text, None, None, at).await?;
            return Ok(());
        }
        CallEventKind::Usage {
            input_tokens,
            output_tokens,
            cached_tokens,
        } => {
            store
                .add_usage(
                    id,
                    *input_tokens as i64,
                    *output_tokens as i64,
                    *cached_tokens as i64,
                )
                .await?;
            return Ok(());
        }
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
    let kind = data["type"].as_str().unwrap_or("event").to_owned();
    store.add_event(id, &kind, &data, at).await
}
