//! The glue between the queue (store) and the calling rules (compliance): turns stored rows
//! into the compliance crate's inputs and its verdicts into queue decisions.

use voxbridge_compliance::{self as compliance, Callee, Decision, Outcome, PastAttempt, Policy};
use voxbridge_store::{CallRecord, ContactNext, DispatchChoice, DispatchInput, FinishInput};

/// A campaign's stored policy. Policies are validated when the campaign is created, so a
/// policy that no longer parses (a field removed in a newer version, say) falls back to the
/// defaults, which are the strictest settings we ship.
pub fn policy_of(value: &serde_json::Value) -> Policy {
    serde_json::from_value(value.clone()).unwrap_or_default()
}

fn timestamp(ms: i64) -> compliance::Timestamp {
    compliance::Timestamp::from_millisecond(ms).unwrap_or(compliance::Timestamp::UNIX_EPOCH)
}

fn history<'a>(entries: &'a [voxbridge_store::HistoryEntry]) -> Vec<PastAttempt<'a>> {
    entries
        .iter()
        .map(|h| PastAttempt {
            at: timestamp(h.started_at_ms),
            subject: &h.campaign_id,
            outcome: h.outcome.as_deref().and_then(|o| o.parse().ok()),
        })
        .collect()
}

/// May this due contact be dialed now?
pub fn decide(now_ms: i64, inp: &DispatchInput<'_>) -> DispatchChoice {
    let policy = policy_of(&inp.campaign.policy);
    let callee = Callee {
        number: &inp.contact.phone,
        timezone: inp.contact.timezone.as_deref(),
        consent: inp.contact.consent,
        do_not_call: inp.do_not_call,
    };
    let past = history(inp.history);
    match compliance::check(timestamp(now_ms), &callee, &past, &inp.campaign.id, &policy) {
        Decision::Allowed => DispatchChoice::Dial,
        Decision::Defer { until, reason } => DispatchChoice::Defer {
            until_ms: until.as_millisecond(),
            code: reason.code().to_owned(),
            message: reason.to_string(),
        },
        Decision::Refuse { reason } => {
            let code = reason.code();
            DispatchChoice::Refuse {
                state: if code == "DO_NOT_CALL" {
                    "opted_out"
                } else {
                    "refused"
                },
                code: code.to_owned(),
                message: reason.to_string(),
            }
        }
    }
}

/// The outcome of a finished campaign call, from its stored record (final Twilio status,
/// answering-machine verdict, the session's end reason).
pub fn outcome_of(call: &CallRecord) -> Outcome {
    let reason = call.end_reason.as_deref().unwrap_or_default();
    match call.status.as_str() {
        "busy" => Outcome::Busy,
        "no-answer" => Outcome::NoAnswer,
        "failed" | "canceled" => Outcome::Failed,
        _ if reason.contains("opt_out") || reason.contains("opted_out") => Outcome::OptedOut,
        _ if reason.contains("declined") => Outcome::Declined,
        _ if call
            .answered_by
            .as_deref()
            .is_some_and(|a| a.starts_with("machine") || a == "fax") =>
        {
            Outcome::Voicemail
        }
        _ => Outcome::Completed,
    }
}

/// What becomes of a contact after a call ended with `outcome`.
pub fn after_call(now_ms: i64, outcome: Outcome, inp: &FinishInput<'_>) -> ContactNext {
    match outcome {
        Outcome::Completed => {
            return ContactNext::Final {
                state: "completed",
                code: "COMPLETED".into(),
                message: "the call took place".into(),
            };
        }
        Outcome::Declined => {
            return ContactNext::Final {
                state: "completed",
                code: "DECLINED".into(),
                message: "the callee declined; never retried".into(),
            };
        }
        Outcome::OptedOut => {
            return ContactNext::Final {
                state: "opted_out",
                code: "OPTED_OUT".into(),
                message: "the callee asked not to be called again".into(),
            };
        }
        Outcome::InvalidNumber => {
            return ContactNext::Final {
                state: "failed",
                code: "INVALID_NUMBER".into(),
                message: "the number is not valid; never retried".into(),
            };
        }
        _ => {}
    }
    let policy = policy_of(&inp.campaign.policy);
    let callee = Callee {
        number: &inp.contact.phone,
        timezone: inp.contact.timezone.as_deref(),
        consent: inp.contact.consent,
        do_not_call: false,
    };
    let past = history(inp.history);
    let first = inp.contact.first_attempt_at_ms.unwrap_or(now_ms);
    match compliance::next_retry(
        timestamp(now_ms),
        outcome,
        timestamp(first),
        u32::try_from(inp.contact.attempts).unwrap_or(u32::MAX),
        &callee,
        &past,
        &inp.campaign.id,
        &policy,
    ) {
        compliance::Retry::At { at } => ContactNext::Retry {
            at_ms: at.as_millisecond(),
            message: format!("{}: retry at {at}", outcome.as_str()),
        },
        compliance::Retry::GiveUp { reason } => ContactNext::Final {
            state: "failed",
            code: "GAVE_UP".into(),
            message: reason,
        },
        compliance::Retry::Never { reason } => ContactNext::Final {
            state: "failed",
            code: "NOT_RETRYABLE".into(),
            message: reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(status: &str, answered_by: Option<&str>, end_reason: Option<&str>) -> CallRecord {
        CallRecord {
            id: "c".into(),
            direction: "outbound".into(),
            from_number: "+15550000000".into(),
            to_number: "+12125550100".into(),
            agent: "default".into(),
            task: None,
            status: status.into(),
            status_history: Vec::new(),
            twilio_call_sid: None,
            stream_sid: None,
            answered_by: answered_by.map(str::to_owned),
            end_reason: end_reason.map(str::to_owned),
            created_at_ms: 0,
            answered_at_ms: None,
            ended_at_ms: None,
            duration_s: None,
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
            recording_sid: None,
            recording_url: None,
            recording_duration_s: None,
            api_key_id: None,
            idempotency_key: None,
        }
    }

    #[test]
    fn outcomes_from_twilio_statuses_and_amd() {
        assert_eq!(outcome_of(&call("busy", None, None)), Outcome::Busy);
        assert_eq!(
            outcome_of(&call("no-answer", None, None)),
            Outcome::NoAnswer
        );
        assert_eq!(outcome_of(&call("failed", None, None)), Outcome::Failed);
        assert_eq!(
            outcome_of(&call("completed", None, None)),
            Outcome::Completed
        );
        assert_eq!(
            outcome_of(&call("completed", Some("human"), None)),
            Outcome::Completed
        );
        assert_eq!(
            outcome_of(&call("completed", Some("machine_end_beep"), None)),
            Outcome::Voicemail
        );
        assert_eq!(
            outcome_of(&call("completed", None, Some("tool:opt_out"))),
            Outcome::OptedOut
        );
        assert!(Outcome::Busy.is_retryable());
        assert!(!Outcome::Declined.is_retryable());
    }
}
