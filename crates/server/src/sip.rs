//! Path B, the OpenAI SIP connector: a Twilio Elastic SIP trunk sends the call to OpenAI,
//! OpenAI tells us with a signed `realtime.call.incoming` webhook, we accept the call with the
//! agent's session over REST and attach the sideband WebSocket (`?call_id=`), and the same
//! [`crate::session`] conversation logic runs on it: greeting, tools, transcripts, events,
//! store. Audio never touches this server.
//!
//! `POST /openai/webhook`: the Standard Webhooks signature is verified over the raw body
//! (`OPENAI_WEBHOOK_SECRET`, 300 s tolerance); a webhook id or call id seen before is
//! answered 200 without acting again (OpenAI redelivers until it gets a 2xx); over capacity
//! or outside `INBOUND_HOURS` the call is rejected (`/reject`); a 404 from `/accept` means the
//! caller already hung up, which is not an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::provider::SipError;
use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::json;
use tracing::{Instrument as _, info, info_span, warn};
use voxbridge_realtime::webhooks::{IncomingCall, WebhookEvent, WebhookVerifier, unix_now};
use voxbridge_twilio::media::Start;

use crate::app::{ApiError, AppState};
use crate::hub::CallEventKind;
use crate::session::{self, CallContext, Transport};

/// How long webhook and call ids are remembered for de-duplication.
const DEDUPE_TTL: Duration = Duration::from_secs(15 * 60);

/// Webhook ids and call ids already handled, with when.
#[derive(Default)]
pub struct Seen {
    ids: Mutex<HashMap<String, Instant>>,
}

impl Seen {
    /// True the first time `key` is seen (within `DEDUPE_TTL`, 15 min).
    pub fn first(&self, key: &str) -> bool {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if ids.len() > 10_000 {
            ids.retain(|_, t| now.duration_since(*t) < DEDUPE_TTL);
        }
        match ids.get(key) {
            Some(t) if now.duration_since(*t) < DEDUPE_TTL => false,
            _ => {
                ids.insert(key.to_owned(), now);
                true
            }
        }
    }

    /// Forget `key`, so that the next delivery naming it is acted on again (the handling
    /// failed and OpenAI will retry).
    pub fn forget(&self, key: &str) {
        self.ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn bad(status: StatusCode, code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(status, code, msg)
}

/// Whether `now` (UTC) is inside `INBOUND_HOURS` (`HH:MM-HH:MM` in `INBOUND_TIMEZONE`).
pub fn within_inbound_hours(hours: Option<&str>, zone: &str, now: jiff::Timestamp) -> bool {
    let Some(hours) = hours else {
        return true;
    };
    let Some((a, b)) = hours.split_once('-') else {
        return true;
    };
    let (Ok(start), Ok(end)) = (
        a.trim().parse::<jiff::civil::Time>(),
        b.trim().parse::<jiff::civil::Time>(),
    ) else {
        return true;
    };
    let tz = jiff::tz::TimeZone::get(zone).unwrap_or(jiff::tz::TimeZone::UTC);
    let local = now.to_zoned(tz).time();
    if start <= end {
        local >= start && local < end
    } else {
        local >= start || local < end
    }
}

/// `POST /openai/webhook`.
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Some(secret) = state.config.openai_webhook_secret.as_deref() else {
        return Err(bad(
            StatusCode::SERVICE_UNAVAILABLE,
            "WEBHOOK_NOT_CONFIGURED",
            "OPENAI_WEBHOOK_SECRET is not set",
        ));
    };
    let verifier = WebhookVerifier::new(secret).map_err(|e| {
        bad(
            StatusCode::SERVICE_UNAVAILABLE,
            "WEBHOOK_NOT_CONFIGURED",
            format!("OPENAI_WEBHOOK_SECRET: {e}"),
        )
    })?;
    verifier
        .verify_headers(&headers, &body, unix_now())
        .map_err(|e| bad(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if !state.sip_seen.first(&format!("webhook:{webhook_id}")) {
        return Ok((StatusCode::OK, Json(json!({"status": "duplicate"}))));
    }
    let event = WebhookEvent::parse(&body)
        .map_err(|e| bad(StatusCode::BAD_REQUEST, "INVALID_PAYLOAD", e.to_string()))?;
    let call = match event {
        WebhookEvent::RealtimeCallIncoming(call) => call,
        WebhookEvent::Other { kind, .. } => {
            info!(%kind, "OpenAI webhook ignored");
            return Ok((StatusCode::OK, Json(json!({"status": "ignored"}))));
        }
    };
    let call_key = format!("call:{}", call.call_id);
    if !state.sip_seen.first(&call_key) {
        return Ok((StatusCode::OK, Json(json!({"status": "duplicate"}))));
    }
    let span = info_span!("sip_call", call_id = %call.call_id);
    let result = incoming(state.clone(), call).instrument(span).await;
    if result.is_err() {
        // Not handled: OpenAI retries until it gets a 2xx, and the retry must be acted on,
        // not acknowledged as a duplicate (the call would be lost).
        state.sip_seen.forget(&format!("webhook:{webhook_id}"));
        state.sip_seen.forget(&call_key);
    }
    result
}

async fn incoming(
    state: AppState,
    call: IncomingCall,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    let Some(provider) = state.provider.clone() else {
        return Err(bad(
            StatusCode::SERVICE_UNAVAILABLE,
            "MODEL_NOT_CONFIGURED",
            "OPENAI_API_KEY is not configured",
        ));
    };
    let to = call.to_number().unwrap_or_default();
    let from = call.from_number().unwrap_or_default();
    info!(%to, %from, "SIP call incoming");
    // Over capacity, or outside the inbound hours: decline at once.
    let refuse = if state.active_calls() >= state.config.max_calls {
        Some((486, "over capacity"))
    } else if !within_inbound_hours(
        state.config.inbound_hours.as_deref(),
        &state.config.inbound_timezone,
        jiff::Timestamp::now(),
    ) {
        Some((480, "outside the inbound hours"))
    } else {
        None
    };
    if let Some((code, why)) = refuse {
        info!(code, why, "rejecting SIP call");
        return match provider.reject_sip_call(&call.call_id, code).await {
            Ok(()) => Ok((
                StatusCode::OK,
                Json(json!({"status": "rejected", "reason": why})),
            )),
            Err(SipError::Gone) => Ok((StatusCode::OK, Json(json!({"status": "gone"})))),
            Err(e) => Err(bad(StatusCode::BAD_GATEWAY, "REJECT_FAILED", e.to_string())),
        };
    }
    let agent = state.agents.for_number(&to);
    let settings = match crate::app::settings_for(&state.config, &agent, None, None, None) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "agent cannot render; rejecting the call");
            let _ = provider.reject_sip_call(&call.call_id, 500).await;
            return Err(bad(
                StatusCode::INTERNAL_SERVER_ERROR,
                "AGENT_TEMPLATE_ERROR",
                e.to_string(),
            ));
        }
    };
    let mut settings = settings;
    // No marks come back on the sideband, so a protected greeting could not be released;
    // the server plays the disclosure whole anyway unless the caller talks over it.
    settings.greeting_protected = false;
    let started = Instant::now();
    let (control, model) = match provider.accept_sip_call(&call.call_id, &settings).await {
        Ok(accepted) => accepted,
        Err(SipError::Gone) => {
            info!("the caller hung up before the call was accepted");
            return Ok((StatusCode::OK, Json(json!({"status": "gone"}))));
        }
        Err(e) => {
            warn!(error = %e, "accept failed");
            return Err(bad(StatusCode::BAD_GATEWAY, "ACCEPT_FAILED", e.to_string()));
        }
    };
    info!(accept_ms = started.elapsed().as_millis() as u64, agent = %agent.name, "SIP call accepted");
    let call_id = call.call_id.clone();
    let created_at_ms = crate::token::now_ms() as i64;
    if let Some(store) = &state.store {
        let new = voxbridge_store::NewCall {
            id: call_id.clone(),
            direction: "inbound".into(),
            from_number: from.clone(),
            to_number: to.clone(),
            agent: agent.name.clone(),
            task: Some(json!({"transport": "sip"})),
            status: "in-progress".into(),
            api_key_id: None,
            idempotency_key: None,
            twilio_call_sid: None,
            created_at_ms,
        };
        if let Err(e) = store.create_call(&new).await {
            warn!(error = %e, "could not store the SIP call");
        }
    }
    state.hub.publish(
        &call_id,
        CallEventKind::Answered {
            from: from.clone(),
            to: to.clone(),
        },
    );
    let ctx = CallContext {
        control: Some(control.clone()),
        signals: None,
        http: Some(state.http.clone()),
        greeting_wait: None,
        peer_number: Some(from.clone()).filter(|f| !f.is_empty()),
        transport: Transport::Sideband,
    };
    let start = Start {
        stream_sid: format!("sip-{call_id}"),
        account_sid: String::new(),
        call_sid: call_id.clone(),
        tracks: Vec::new(),
        custom_parameters: Default::default(),
        media_format: Default::default(),
    };
    let settings = Arc::new(settings);
    let hub = state.hub.clone();
    let st = state.clone();
    st.sip_call_started();
    // The session ends the call politely at the agent's longest call (a goodbye, then a
    // hang-up); this is the backstop should it not (nothing else bounds a SIP call: there is
    // no Twilio time limit).
    let limit = Duration::from_secs(u64::from(agent.max_call_duration_s.max(1)) + 30);
    tokio::spawn(
        async move {
            let run = session::run(
                call_id.clone(),
                start,
                crate::ws::detached(),
                model,
                settings,
                hub.clone(),
                ctx,
            );
            let reason = tokio::select! {
                summary = run => {
                    info!(reason = ?summary.end_reason, tools = summary.tool_calls.len(), "SIP call finished");
                    summary.end_reason.map(|r| r.to_string())
                }
                () = tokio::time::sleep(limit) => {
                    // The session (and its sideband) is dropped; end the call at OpenAI.
                    let reason = format!("max_duration: {} s", limit.as_secs());
                    warn!(%reason, "SIP call reached the agent's longest call; hanging up");
                    if let Err(e) = crate::session::CallControl::hangup(&*control).await {
                        warn!(error = %e, "hang-up request failed");
                    }
                    hub.publish(&call_id, CallEventKind::Ended { reason: reason.clone() });
                    Some(reason)
                }
            };
            st.sip_call_ended();
            // Nothing else (no Twilio status callback) closes the stored call.
            if let Some(store) = &st.store {
                let now = crate::token::now_ms() as i64;
                let duration_s = (now - created_at_ms).max(0) / 1000;
                let record = async {
                    store
                        .finish_call(&call_id, reason.as_deref(), now, Some(duration_s))
                        .await?;
                    store.update_status(&call_id, "completed", now).await.map(|_| ())
                };
                if let Err(e) = record.await {
                    warn!(error = %e, "could not record the end of the SIP call");
                }
            }
        }
        .in_current_span(),
    );
    Ok((StatusCode::OK, Json(json!({"status": "accepted"}))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_hours() {
        let t: jiff::Timestamp = "2026-11-23T15:00:00Z".parse().expect("ts");
        assert!(within_inbound_hours(None, "UTC", t));
        assert!(within_inbound_hours(Some("09:00-17:00"), "UTC", t));
        assert!(!within_inbound_hours(
            Some("09:00-17:00"),
            "America/New_York",
            t.checked_add(jiff::SignedDuration::from_hours(8))
                .expect("t")
        ));
        // over midnight
        assert!(within_inbound_hours(
            Some("22:00-06:00"),
            "UTC",
            "2026-11-23T23:30:00Z".parse().expect("ts")
        ));
        assert!(!within_inbound_hours(Some("22:00-06:00"), "UTC", t));
    }

    #[test]
    fn dedupe() {
        let s = Seen::default();
        assert!(s.first("a"));
        assert!(!s.first("a"));
        assert!(s.first("b"));
        s.forget("a");
        assert!(s.first("a"));
    }
}
