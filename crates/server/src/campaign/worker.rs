//! The campaign worker: one task per node that takes due contacts off the queue, dials them,
//! and reconciles attempts whose fate is unknown.
//!
//! At-most-once dialing: an attempt is stored as `dialing` (in the transaction that takes the
//! contact off the queue) *before* Twilio is asked to place the call, and only the task that
//! stored it sends that request, once. If the request fails in a way that proves Twilio
//! created nothing (a 4xx: Twilio validates before it creates), the attempt is closed; if the
//! answer is ambiguous (timeout, 5xx, crash) the attempt stays `dialing` until its lease runs
//! out, and then the reconciler asks Twilio for calls to that number since the attempt began:
//! found -> the attempt is tied to that call; not found -> `not_placed`, and only then may the
//! contact be dialed again (as a new attempt). When Twilio cannot be asked, nothing happens.

use std::time::Duration;

use tracing::{Instrument as _, debug, info, info_span, warn};
use voxbridge_compliance::Outcome;
use voxbridge_store::{AttemptRecord, DialTicket, DispatchLimits, Store, StoreError};
use voxbridge_twilio::rest::{CallResource, ListCalls, TwilioClient, TwilioError};

use super::rules;
use crate::AppState;
use crate::hub::CallEventKind;
use crate::token::now_ms;

/// Most attempts one reconcile pass looks at.
const RECONCILE_BATCH: i64 = 50;
/// Clock skew allowed between our `started_at_ms` and Twilio's `date_created`.
const SKEW_MS: i64 = 60_000;
/// Circuit breaker: look at this many recent outcomes, over this long…
const BREAKER_WINDOW: i64 = 20;
const BREAKER_SPAN_MS: i64 = 10 * 60_000;
/// …once at least this many are known.
const BREAKER_MIN_SAMPLES: usize = 10;

fn now() -> i64 {
    now_ms() as i64
}

/// Runs the worker until `shutdown` resolves. Needs a store and a Twilio client; without
/// them it returns at once.
pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let (Some(store), Some(twilio)) = (state.store.clone(), state.twilio.clone()) else {
        info!("campaign worker off: it needs a database and Twilio credentials");
        return;
    };
    let node = state.node_id.clone();
    info!(%node, "campaign worker started");
    // Attempts this node left `dialing` when it last stopped are in doubt now: release their
    // lease so the first reconcile pass looks at them at once.
    match store.release_node_leases(&node, now()).await {
        Ok(0) => {}
        Ok(n) => info!(
            count = n,
            "attempts left dialing by an earlier run: reconciling"
        ),
        Err(e) => warn!(error = %e, "could not release this node's leases"),
    }
    let poll = Duration::from_millis(state.config.campaign_poll_ms);
    tokio::pin!(shutdown);
    loop {
        if let Err(e) = reconcile(&state, &store, &twilio).await {
            warn!(error = %e, "campaign reconcile failed");
        }
        let next_due = match dispatch_due(&state, &store, &twilio).await {
            Ok(next) => next,
            Err(e) => {
                warn!(error = %e, "campaign dispatch failed");
                None
            }
        };
        // Finishing a call completes its campaign; contacts closed another way (the
        // do-not-call list, a campaign resumed after its last call) are caught here.
        if let Err(e) = store.complete_finished_campaigns(now()).await {
            warn!(error = %e, "campaign completion sweep failed");
        }
        let sleep = next_due
            .map(|at| Duration::from_millis((at - now()).clamp(0, poll.as_millis() as i64) as u64))
            .unwrap_or(poll);
        tokio::select! {
            _ = &mut shutdown => break,
            _ = state.campaign_wake.notified() => {}
            _ = tokio::time::sleep(sleep) => {}
        }
    }
    info!("campaign worker stopped");
}

/// Dials what is due in every active campaign, within this node's limit. Returns when the
/// next contact is due.
async fn dispatch_due(
    state: &AppState,
    store: &Store,
    twilio: &TwilioClient,
) -> Result<Option<i64>, StoreError> {
    let node = &state.node_id;
    let limit = i64::from(state.config.campaign_max_concurrent);
    for campaign_id in store.due_campaigns(now()).await? {
        // The breaker also runs when an attempt finishes, but that call's contact is free
        // again before the pause is written: checking here too means a campaign is never
        // dialed past its threshold by more than the one call already being placed. Only
        // outcomes since the campaign's last change count here, so a campaign resumed
        // after a pause is dialed again (its next failure pauses it, as before).
        if circuit_breaker(store, &campaign_id, Since::LastChange).await? {
            continue;
        }
        let live = store.live_attempts_of_node(node).await?;
        if live >= limit {
            debug!(live, limit, "campaign worker at its node limit");
            break;
        }
        let t = now();
        let lim = DispatchLimits {
            now_ms: t,
            node: node.clone(),
            lease_ms: state.config.campaign_lease_ms as i64,
            node_free: limit - live,
        };
        let agents = state.agents.current();
        let tickets = store
            .dispatch(&campaign_id, &lim, |inp| {
                let choice = rules::decide(t, inp);
                if choice != voxbridge_store::DispatchChoice::Dial {
                    return choice;
                }
                // A contact whose fields do not fill the agent's templates would fail at the
                // voice webhook, after the phone rang: refuse it now, saying which field.
                let task = voxbridge_store::call_task(inp.campaign, inp.contact);
                let task: Option<crate::agents::Task> =
                    serde_json::from_value(task["task"].clone()).ok();
                match agents.get(&inp.campaign.agent) {
                    None => voxbridge_store::DispatchChoice::Defer {
                        until_ms: t + 60_000,
                        code: "UNKNOWN_AGENT".into(),
                        message: format!("no agent named {:?} is loaded", inp.campaign.agent),
                    },
                    Some(agent) => match crate::agents::check_task(&agent, task.as_ref()) {
                        Ok(()) => choice,
                        Err(e) => voxbridge_store::DispatchChoice::Refuse {
                            state: "refused",
                            code: "TEMPLATE_ERROR".into(),
                            message: e.to_string(),
                        },
                    },
                }
            })
            .await?;
        for ticket in tickets {
            let span = info_span!("campaign_call", call_id = %ticket.attempt.call_id,
                campaign = %ticket.campaign.id, attempt = ticket.attempt.seq);
            let (state, store, twilio) = (state.clone(), store.clone(), twilio.clone());
            tokio::spawn(
                async move { dial(&state, &store, &twilio, ticket).await }.instrument(span),
            );
        }
    }
    store.next_due_ms().await
}

/// Places one call. The attempt is already stored as `dialing`.
async fn dial(state: &AppState, store: &Store, twilio: &TwilioClient, t: DialTicket) {
    let a = &t.attempt;
    let request =
        crate::api::outbound_request(&state.config, &a.call_id, &a.phone, &t.campaign.from_number);
    state.hub.publish(
        &a.call_id,
        CallEventKind::Status {
            status: "dialing".into(),
        },
    );
    match twilio.create_call(&request).await {
        Ok(call) => {
            info!(call_sid = %call.sid, to = %a.phone, "campaign call placed");
            if let Err(e) = store
                .attempt_placed(&a.id, &call.sid, now() + call_lease_ms(state), now())
                .await
            {
                // The attempt stays `dialing`; the reconciler will find this call at Twilio.
                warn!(error = %e, "could not record the placed call");
            }
        }
        Err(e) if certainly_not_created(&e) => {
            warn!(error = %e, "Twilio refused the campaign call");
            let outcome = if e.code() == "INVALID_PHONE" {
                Outcome::InvalidNumber
            } else {
                Outcome::Failed
            };
            let detail = format!("Twilio refused the call: {e}");
            if let Err(e) = finish(state, store, a, outcome, Some(&detail)).await {
                warn!(error = %e, "could not record the refused call");
            }
        }
        Err(e) => {
            // Twilio may or may not have created the call: never guess. The attempt stays
            // `dialing` and the reconciler asks Twilio once the lease has run out.
            warn!(error = %e, "campaign call in doubt; the reconciler will ask Twilio");
        }
    }
}

/// Twilio validates a create-call request before it creates anything, so a 4xx answer (or a
/// request we refused to send) proves there is no call; a timeout or a 5xx does not.
fn certainly_not_created(e: &TwilioError) -> bool {
    match e {
        TwilioError::InvalidRequest(_) => true,
        TwilioError::Api { status, .. } => (400..500).contains(status),
        _ => false,
    }
}

/// How long a placed call is left to its status callbacks before the reconciler asks Twilio:
/// the longest it can ring and last, plus one lease.
fn call_lease_ms(state: &AppState) -> i64 {
    let c = &state.config;
    (i64::from(c.ring_timeout_s) + i64::from(c.max_call_duration_s)) * 1000
        + c.campaign_lease_ms as i64
}

/// Finishes an attempt with `outcome` and schedules the contact (retry or final), then runs
/// the campaign's circuit breaker.
pub async fn finish(
    state: &AppState,
    store: &Store,
    a: &AttemptRecord,
    outcome: Outcome,
    detail: Option<&str>,
) -> Result<(), StoreError> {
    let t = now();
    let done = store
        .finish_attempt(&a.id, outcome.as_str(), detail, t, |inp| {
            rules::after_call(t, outcome, inp)
        })
        .await?;
    let Some((contact, next)) = done else {
        return Ok(()); // already finished by another report
    };
    info!(contact = %contact.id, outcome = outcome.as_str(), state = %contact.state, ?next, "campaign attempt finished");
    if outcome == Outcome::OptedOut {
        store
            .add_dnc(&a.phone, Some("opted out during a call"), "agent", t)
            .await?;
    }
    circuit_breaker(store, &a.campaign_id, Since::Window).await?;
    state.campaign_wake.notify_one();
    Ok(())
}

/// Which outcomes the circuit breaker looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Since {
    /// Those of the breaker's time span.
    Window,
    /// Those of the span that ended after the campaign's last change (a resume, an edit).
    LastChange,
}

/// Pauses a campaign whose recent calls mostly failed, saying why. True when it tripped
/// (the campaign must not be dialed).
async fn circuit_breaker(
    store: &Store,
    campaign_id: &str,
    since: Since,
) -> Result<bool, StoreError> {
    let Some(c) = store.get_campaign(campaign_id).await? else {
        return Ok(false);
    };
    if c.status != "active" || c.failure_threshold <= 0.0 {
        return Ok(false);
    }
    let mut from = now() - BREAKER_SPAN_MS;
    if since == Since::LastChange {
        from = from.max(c.updated_at_ms);
    }
    let recent = store
        .recent_outcomes(campaign_id, from, BREAKER_WINDOW)
        .await?;
    if recent.len() < BREAKER_MIN_SAMPLES {
        return Ok(false);
    }
    let failed = recent.iter().filter(|o| *o == "failed").count();
    let share = failed as f64 / recent.len() as f64;
    if share >= c.failure_threshold {
        let reason = format!(
            "paused automatically: {failed} of the last {} calls failed ({:.0}% >= the {:.0}% threshold); \
             check the Twilio account and the numbers, then resume",
            recent.len(),
            share * 100.0,
            c.failure_threshold * 100.0
        );
        warn!(campaign = %campaign_id, %reason, "campaign circuit breaker");
        match store
            .set_campaign_status(campaign_id, "paused", Some(&reason), &["active"], now())
            .await
        {
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        return Ok(true);
    }
    Ok(false)
}

/// A stored call reached a final status (Twilio's status callback): finish its campaign
/// attempt, if it has one.
pub async fn call_ended(state: &AppState, call_id: &str) -> Result<(), StoreError> {
    let Some(store) = state.store.as_ref() else {
        return Ok(());
    };
    let Some(a) = store.attempt_by_call(call_id).await? else {
        return Ok(());
    };
    if a.state != "dialing" && a.state != "in_call" {
        return Ok(());
    }
    let Some(call) = store.get_call(call_id).await? else {
        return Ok(());
    };
    finish(state, store, &a, rules::outcome_of(&call), None).await
}

/// Looks at attempts whose lease ran out.
async fn reconcile(
    state: &AppState,
    store: &Store,
    twilio: &TwilioClient,
) -> Result<(), StoreError> {
    let lease = state.config.campaign_lease_ms as i64;
    let claimed = store
        .claim_expired_attempts(now(), &state.node_id, lease, RECONCILE_BATCH)
        .await?;
    for a in claimed {
        let span = info_span!("reconcile", call_id = %a.call_id, attempt = %a.id, state = %a.state);
        let r = async {
            match a.state.as_str() {
                "dialing" => reconcile_in_doubt(state, store, twilio, &a).await,
                _ => reconcile_stale(state, store, twilio, &a).await,
            }
        }
        .instrument(span)
        .await;
        if let Err(e) = r {
            warn!(attempt = %a.id, error = %e, "reconcile failed; will retry after the lease");
        }
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("Twilio: {0}")]
    Twilio(#[from] TwilioError),
}

/// An attempt left `dialing`: did Twilio create the call?
async fn reconcile_in_doubt(
    state: &AppState,
    store: &Store,
    twilio: &TwilioClient,
    a: &AttemptRecord,
) -> Result<(), ReconcileError> {
    // A status callback may already have told us the CallSid.
    let known = store
        .get_call(&a.call_id)
        .await?
        .and_then(|c| c.twilio_call_sid);
    let found = match known {
        Some(sid) => Some(twilio.fetch_call(&sid).await?),
        None => find_at_twilio(store, twilio, a).await?,
    };
    match found {
        Some(call) => {
            info!(call_sid = %call.sid, "in-doubt attempt: Twilio has the call");
            store
                .log_contact(
                    &a.contact_id,
                    "reconciled",
                    Some("FOUND_AT_TWILIO"),
                    &format!(
                        "in doubt after a lost answer or a restart: Twilio has call {}",
                        call.sid
                    ),
                    now(),
                )
                .await?;
            store
                .attempt_placed(&a.id, &call.sid, now() + call_lease_ms(state), now())
                .await?;
            settle_if_final(state, store, a, &call).await?;
        }
        None => {
            info!("in-doubt attempt: Twilio has no such call; back on the queue");
            store
                .attempt_not_placed(
                    &a.id,
                    "Twilio has no call for this attempt (found by the reconciler)",
                    now(),
                    now(),
                )
                .await?;
            state.campaign_wake.notify_one();
        }
    }
    Ok(())
}

/// Calls to the attempt's number from the campaign's caller id created since the attempt
/// began, that no other attempt or call of ours owns. No `StartTime` filter: a call Twilio
/// still holds `queued` has not started and would be missed.
async fn find_at_twilio(
    store: &Store,
    twilio: &TwilioClient,
    a: &AttemptRecord,
) -> Result<Option<CallResource>, ReconcileError> {
    let from = store.get_call(&a.call_id).await?.map(|c| c.from_number);
    let calls = twilio
        .list_calls(&ListCalls {
            to: Some(a.phone.clone()),
            from,
            ..ListCalls::default()
        })
        .await?;
    let since = a.started_at_ms - SKEW_MS;
    let mut candidates: Vec<(i64, CallResource)> = calls
        .into_iter()
        .filter_map(|c| {
            let created = c
                .date_created
                .as_deref()
                .and_then(|d| jiff::fmt::rfc2822::parse(d).ok())
                .map(|z| z.timestamp().as_millisecond())?;
            (created >= since).then_some((created, c))
        })
        .collect();
    let sids: Vec<String> = candidates.iter().map(|(_, c)| c.sid.clone()).collect();
    let owned = store.known_call_sids(&sids).await?;
    candidates.retain(|(_, c)| !owned.contains(&c.sid));
    candidates.sort_by_key(|(t, _)| *t);
    Ok(candidates.into_iter().next().map(|(_, c)| c))
}

/// A placed call whose end was never reported: ask Twilio.
async fn reconcile_stale(
    state: &AppState,
    store: &Store,
    twilio: &TwilioClient,
    a: &AttemptRecord,
) -> Result<(), ReconcileError> {
    let Some(sid) = a.twilio_call_sid.clone() else {
        return Ok(());
    };
    let call = twilio.fetch_call(&sid).await?;
    if !settle_if_final(state, store, a, &call).await? {
        store
            .extend_attempt_lease(&a.id, now() + call_lease_ms(state))
            .await?;
    }
    Ok(())
}

/// When Twilio says the call is over, record its status on the call and finish the attempt.
async fn settle_if_final(
    state: &AppState,
    store: &Store,
    a: &AttemptRecord,
    call: &CallResource,
) -> Result<bool, ReconcileError> {
    if !voxbridge_store::is_terminal_status(&call.status) {
        return Ok(false);
    }
    let t = now();
    let rec = store.update_status(&a.call_id, &call.status, t).await?;
    if let Some(by) = &call.answered_by
        && rec.answered_by.is_none()
    {
        store.set_answered_by(&a.call_id, by).await?;
    }
    let duration = call.duration.as_deref().and_then(|d| d.parse().ok());
    store
        .finish_call(
            &a.call_id,
            (call.status != "completed").then_some(call.status.as_str()),
            t,
            duration,
        )
        .await?;
    call_ended(state, &a.call_id).await?;
    Ok(true)
}
