//! The store's writer: every call event from the hub, written in order by
//! one task, off the audio path.

use crate::hub::{CallEvent, CallEventKind, Speaker};
use tokio::sync::mpsc::UnboundedReceiver;
use tracing::warn;
use voxbridge_store::Store;

/// Write events until the hub is gone.
pub async fn run_writer(store: Store, mut rx: UnboundedReceiver<CallEvent>) {
    while let Some(ev) = rx.recv().await {
        if let Err(e) = write(&store, &ev).await {
            // The call row may not exist (e.g. a call the store never saw);
            // log and go on: one bad event must not stop the writer.
            warn!(call_id = %ev.call_id, error = %e, "could not persist call event");
        }
    }
}

async fn write(store: &Store, ev: &CallEvent) -> Result<(), voxbridge_store::StoreError> {
    let at = ev.at_ms as i64;
    let id = ev.call_id.as_str();
    if store.get_call(id).await?.is_none() {
        return Ok(()); // not a stored call (e.g. the store was added later)
    }
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
        _ => {}
    }
    let data = serde_json::to_value(&ev.kind).unwrap_or_default();
    let kind = data["type"].as_str().unwrap_or("event").to_owned();
    store.add_event(id, &kind, &data, at).await
}
