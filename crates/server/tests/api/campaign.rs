//! Campaigns end to end: REST import -> the worker -> the calling rules -> Twilio REST
//! (emulated) -> real calls -> status callbacks -> outcomes, retries and deferrals; a lost
//! create-call response reconciled by asking Twilio; the do-not-call list. SQLite always,
//! PostgreSQL when `VOXBRIDGE_TEST_PG_URL` is set.

use crate::helpers::*;
use serde_json::{Value, json};
use std::time::Duration;
use voxbridge_sim::caller::CallerStep;
use voxbridge_sim::twilio_api::{CreateFault, CreateFaultRule, Outcome, TwilioEmulatorConfig};

/// A fixed-offset zone whose local hour is now about `target` (so the test does not depend on
/// the time of day it runs at).
pub fn zone_at_local_hour(target: i64) -> String {
    let hour = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .hour() as i64;
    let off = (target - hour + 36).rem_euclid(24) - 12; // -12..=11
    match off {
        0 => "Etc/UTC".into(),
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

fn local(ms: i64, zone: &str) -> jiff::Zoned {
    jiff::Timestamp::from_millisecond(ms)
        .expect("timestamp")
        .to_zoned(jiff::tz::TimeZone::get(zone).expect("zone"))
}

const ANSWER: &str = "+12125550101";
const BUSY: &str = "+12125550102";
const CLOSED: &str = "+12125550103";
const LISTED: &str = "+12125550104";
const NO_CONSENT: &str = "+12125550105";
const LOST: &str = "+12125550106";
const FAILS: &str = "+12125550107";
const UNAVAILABLE: &str = "+12125550108";

fn posts_to(full: &FullApp, number: &str) -> usize {
    full.twilio
        .requests()
        .iter()
        .filter(|r| {
            r.method == "POST"
                && r.path.ends_with("/Calls.json")
                && r.form.iter().any(|(k, v)| k == "To" && v == number)
        })
        .count()
}

async fn contacts(full: &FullApp, id: &str) -> Vec<Value> {
    full.get(&format!("/v1/campaigns/{id}/contacts"))
        .await
        .json()
        .await
        .expect("json")
}

fn by_phone<'a>(list: &'a [Value], phone: &str) -> &'a Value {
    list.iter()
        .find(|c| c["phone"] == phone)
        .unwrap_or_else(|| panic!("no contact {phone} in {list:#?}"))
}

async fn campaign_follows_the_rules(backend: Backend) {
    let emu = TwilioEmulatorConfig {
        default_script: vec![CallerStep::Silence { ms: 300 }, CallerStep::Hangup],
        // Longer than the lease below: the lost-response call is still ringing when the
        // reconciler asks Twilio about it.
        ring_ms: 7_000,
        outcomes: vec![
            (BUSY.into(), Outcome::Busy),
            (LOST.into(), Outcome::NoAnswer),
            (FAILS.into(), Outcome::Fail),
        ],
        create_faults: vec![
            CreateFaultRule::once(LOST, CreateFault::LoseResponse),
            // 503 three times: the client's retries are used up and the answer is ambiguous.
            CreateFaultRule::times(
                UNAVAILABLE,
                CreateFault::Reject {
                    status: 503,
                    code: 20503,
                },
                3,
            ),
        ],
        ..TwilioEmulatorConfig::default()
    };
    let full = spawn_full(
        backend,
        emu,
        &[("CAMPAIGN_POLL_MS", "100"), ("CAMPAIGN_LEASE_MS", "5000")],
    )
    .await;
    let open = zone_at_local_hour(13);
    let closed = zone_at_local_hour(3);

    let r = full
        .post_json("/v1/dnc", &json!({"phone": LISTED, "reason": "asked"}))
        .await;
    assert_eq!(r.status(), 201);

    let csv = format!(
        "phone,name,timezone,consent,appointment\n\
         {ANSWER},Ana,{open},yes,Tue 10:00\n\
         {BUSY},Bob,{open},yes,\n\
         {CLOSED},Cy,{closed},yes,\n\
         {LISTED},Dee,{open},yes,\n\
         {NO_CONSENT},Eve,{open},no,\n\
         {LOST},Fay,{open},yes,\n\
         {FAILS},Gus,{open},yes,\n\
         {UNAVAILABLE},Ida,{open},yes,\n\
         not-a-number,Hal,{open},yes,\n\
         {ANSWER},Ana again,{open},yes,\n"
    );
    let r = full
        .post_json(
            "/v1/campaigns",
            &json!({"name": "reminders", "task": {"type": "appointment_reminder",
                    "prompt": "Remind them of the appointment."},
                    "max_concurrent": 10, "calls_per_minute": 600, "csv": csv}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.expect("json");
    let id = created["campaign"]["id"].as_str().expect("id").to_owned();
    let report = &created["import"];
    assert_eq!(report["received"], 10);
    assert_eq!(report["accepted"], 7);
    let codes: Vec<(i64, &str)> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["row"].as_i64().unwrap_or(0),
                e["code"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (6, "MISSING_CONSENT"),
            (10, "INVALID_PHONE"),
            (11, "DUPLICATE")
        ]
    );

    // Everything that can finish quickly finishes; the lost response is reconciled.
    let done = async {
        loop {
            let list = contacts(&full, &id).await;
            let settled = list.iter().all(|c| {
                let s = c["state"].as_str().unwrap_or("");
                s != "pending" && s != "dialing" && s != "in_call"
            });
            if settled && list.len() == 7 {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let list = tokio::time::timeout(Duration::from_secs(60), done)
        .await
        .expect("campaign settles within 60 s");

    // Answered: completed; the agent got the contact's columns.
    let a = by_phone(&list, ANSWER);
    assert_eq!(a["state"], "completed", "{a:#}");
    assert_eq!(a["last_outcome"], "completed");
    let detail: Value = full
        .get(&format!(
            "/v1/campaigns/{id}/contacts/{}",
            a["id"].as_str().unwrap_or("")
        ))
        .await
        .json()
        .await
        .expect("json");
    let call_id = detail["attempts"][0]["call_id"].as_str().expect("call id");
    let call = full
        .store
        .get_call(call_id)
        .await
        .expect("store")
        .expect("call");
    let task = call.task.expect("task");
    assert_eq!(task["task"]["context"]["appointment"], "Tue 10:00");
    assert_eq!(task["task"]["context"]["name"], "Ana");

    // Busy and failed: retried later, on a retry slot (10:00, 14:00, 18:00 local).
    for (phone, outcome) in [(BUSY, "busy"), (FAILS, "failed")] {
        let c = by_phone(&list, phone);
        assert_eq!(c["state"], "deferred", "{c:#}");
        assert_eq!(c["last_outcome"], outcome);
        assert_eq!(c["reason_code"], "RETRY");
        let at: jiff::Timestamp = c["next_run_at"].as_str().expect("ts").parse().expect("ts");
        let t = local(at.as_millisecond(), &open);
        assert!(
            [10, 14, 18].contains(&t.hour()) && t.minute() == 0,
            "retry at {t} is not a retry slot"
        );
        assert!(at > jiff::Timestamp::now());
    }

    // Outside its window: deferred to the window's start, never dialed.
    let c = by_phone(&list, CLOSED);
    assert_eq!(c["state"], "deferred", "{c:#}");
    assert_eq!(c["reason_code"], "OUTSIDE_WINDOW");
    let at: jiff::Timestamp = c["next_run_at"].as_str().expect("ts").parse().expect("ts");
    let t = local(at.as_millisecond(), &closed);
    assert_eq!((t.hour(), t.minute()), (9, 0), "deferred to {t}");
    assert_eq!(posts_to(&full, CLOSED), 0);

    // On the do-not-call list: never dialed.
    let c = by_phone(&list, LISTED);
    assert_eq!(c["state"], "opted_out", "{c:#}");
    assert_eq!(c["reason_code"], "DO_NOT_CALL");
    assert_eq!(posts_to(&full, LISTED), 0);

    // The lost response: Twilio had placed the call; the reconciler found it, tied it to the
    // attempt, and the number was not dialed a second time.
    let c = by_phone(&list, LOST);
    assert_eq!(posts_to(&full, LOST), 1, "dialed once");
    assert_eq!(c["last_outcome"], "no_answer", "{c:#}");
    let detail: Value = full
        .get(&format!(
            "/v1/campaigns/{id}/contacts/{}",
            c["id"].as_str().unwrap_or("")
        ))
        .await
        .json()
        .await
        .expect("json");
    let attempts = detail["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "{detail:#}");
    assert_eq!(attempts[0]["state"], "done");
    assert!(attempts[0]["twilio_call_sid"].is_string(), "{detail:#}");
    let emulated = full.twilio.calls();
    let sid = attempts[0]["twilio_call_sid"].as_str().unwrap_or("");
    assert!(emulated.iter().any(|c| c.sid == sid && c.to == LOST));
    assert!(
        detail["log"]
            .as_array()
            .expect("log")
            .iter()
            .any(|l| l["kind"] == "reconciled" && l["code"] == "FOUND_AT_TWILIO"),
        "{detail:#}"
    );

    // Twilio unavailable (503 after retries): in doubt; the reconciler finds no call, the
    // attempt is closed as not placed, and only then is the contact dialed again.
    let c = by_phone(&list, UNAVAILABLE);
    assert_eq!(c["state"], "completed", "{c:#}");
    assert_eq!(
        posts_to(&full, UNAVAILABLE),
        4,
        "3 refused requests, then the redial"
    );
    assert_eq!(emulated.iter().filter(|e| e.to == UNAVAILABLE).count(), 1);
    let detail: Value = full
        .get(&format!(
            "/v1/campaigns/{id}/contacts/{}",
            c["id"].as_str().unwrap_or("")
        ))
        .await
        .json()
        .await
        .expect("json");
    let states: Vec<&str> = detail["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .map(|a| a["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, vec!["not_placed", "done"], "{detail:#}");
    assert_eq!(
        detail["contact"]["attempts"], 1,
        "a call never placed is not an attempt"
    );

    // Every number was dialed at most once (one attempt each so far).
    for phone in [ANSWER, BUSY, FAILS, LOST] {
        assert_eq!(posts_to(&full, phone), 1, "{phone}");
    }
    let status: Value = full
        .get(&format!("/v1/campaigns/{id}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(status["status"], "active");
    assert_eq!(status["counts"]["completed"], 2);
    assert_eq!(status["counts"]["deferred"], 4);
    assert_eq!(status["counts"]["opted_out"], 1);
    assert!(status["eta"].is_string(), "{status:#}");

    // Pause and cancel.
    let r = full
        .post_json(&format!("/v1/campaigns/{id}/pause"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let r = full
        .post_json(&format!("/v1/campaigns/{id}/pause"), &json!({}))
        .await;
    assert_eq!(r.status(), 409);
    let r = full
        .post_json(&format!("/v1/campaigns/{id}/cancel"), &json!({}))
        .await;
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "canceled");
    assert_eq!(v["counts"]["canceled"], 4);
}

on_both_backends!(campaign_follows_the_rules => campaign_follows_the_rules_sqlite, campaign_follows_the_rules_postgres);

/// Twilio refusing every call (a wrong caller id, say) trips the circuit breaker: the
/// campaign pauses itself and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_pauses_a_failing_campaign() {
    let numbers: Vec<String> = (0..12).map(|i| format!("+1212555{:04}", 200 + i)).collect();
    let emu = TwilioEmulatorConfig {
        create_faults: numbers
            .iter()
            .map(|n| {
                CreateFaultRule::always(
                    n.clone(),
                    CreateFault::Reject {
                        status: 400,
                        code: 21215,
                    },
                )
            })
            .collect(),
        ..TwilioEmulatorConfig::default()
    };
    let full = spawn_full(Backend::Sqlite, emu, &[("CAMPAIGN_POLL_MS", "50")]).await;
    let open = zone_at_local_hour(13);
    let contacts: Vec<Value> = numbers
        .iter()
        .map(|n| json!({"phone": n, "timezone": open, "consent": true}))
        .collect();
    let r = full
        .post_json(
            "/v1/campaigns",
            &json!({"name": "bad caller id", "max_concurrent": 1, "calls_per_minute": 0,
                    "contacts": contacts}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["campaign"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let paused = async {
        loop {
            let v: Value = full
                .get(&format!("/v1/campaigns/{id}"))
                .await
                .json()
                .await
                .expect("json");
            if v["status"] == "paused" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let v = tokio::time::timeout(Duration::from_secs(30), paused)
        .await
        .expect("paused by the circuit breaker");
    let reason = v["status_reason"].as_str().unwrap_or("");
    // (10, or 11 when an eleventh was dialed while the tenth's outcome was being written)
    assert!(
        reason.starts_with("paused automatically: 1")
            && reason.contains("calls failed (100% >= the 50% threshold)"),
        "{reason}"
    );
    // The breaker stops dialing at its threshold: 10 tried, 2 left alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts = create_requests(&full);
    // (an eleventh may have been dialed while the tenth's outcome was being written)
    assert!((10..=11).contains(&posts), "{posts} create requests");

    // Resumed (say, after the account was fixed), it dials again: the failures that
    // paused it do not pause it again before a call is placed.
    let r = full
        .post_json(&format!("/v1/campaigns/{id}/resume"), &json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let dialed_again = async {
        loop {
            let n = create_requests(&full);
            if n > posts {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), dialed_again)
        .await
        .expect("a resumed campaign dials its remaining contacts");
}

/// How many calls were asked of the Twilio emulator.
fn create_requests(full: &FullApp) -> usize {
    full.twilio
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/Calls.json"))
        .count()
}

/// Bad requests get clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_bad_input() {
    let full = spawn_full(
        Backend::Sqlite,
        TwilioEmulatorConfig::default(),
        &[("CAMPAIGN_WORKER", "false")],
    )
    .await;
    for (body, code) in [
        (json!({"name": ""}), "INVALID_NAME"),
        (json!({"name": "x", "agent": "nobody"}), "UNKNOWN_AGENT"),
        (
            json!({"name": "x", "policy": {"window_start": "07:00"}}),
            "INVALID_POLICY",
        ),
        (
            json!({"name": "x", "policy": {"window_end": "22:00"}}),
            "INVALID_POLICY",
        ),
        (
            json!({"name": "x", "policy": {"colour": "red"}}),
            "INVALID_POLICY",
        ),
        (json!({"name": "x", "csv": "name\nAna\n"}), "INVALID_CSV"),
        (json!({"name": "x", "max_concurrent": 0}), "INVALID_LIMIT"),
        (json!({"name": "x", "surprise": 1}), "INVALID_REQUEST"),
    ] {
        let r = full.post_json("/v1/campaigns", &body).await;
        assert_eq!(r.status(), 400, "{body}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["code"], code, "{body} -> {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = full
        .post_json(
            "/v1/campaigns",
            &json!({"name": "x", "policy": {"window_start": "07:00"}}),
        )
        .await;
    let v: Value = r.json().await.expect("json");
    assert!(
        v["error"].as_str().unwrap_or("").contains("window_start"),
        "{v}"
    );

    // CSV upload to an existing campaign: per-row report, good rows kept, nothing half-written.
    let r = full
        .post_json("/v1/campaigns", &json!({"name": "later"}))
        .await;
    let id = r.json::<Value>().await.expect("json")["campaign"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let csv = "phone,consent,timezone\n+12125550301,true,America/Chicago\n+12125550301,true,\n+1212,true,\n+12125550302,true,Nowhere/Land\n";
    let r = full
        .http
        .post(full.url(&format!("/v1/campaigns/{id}/contacts")))
        .bearer_auth(&full.api_key)
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.expect("json");
    assert_eq!(
        (report["accepted"].as_i64(), report["rejected"].as_i64()),
        (Some(1), Some(3)),
        "{report:#}"
    );
    let fields: Vec<&str> = report["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(fields, vec!["phone", "phone", "timezone"]);
    // the same file again: every row is now a duplicate
    let r = full
        .http
        .post(full.url(&format!("/v1/campaigns/{id}/contacts")))
        .bearer_auth(&full.api_key)
        .header("content-type", "text/csv")
        .body("phone,consent\n+12125550301,true\n")
        .send()
        .await
        .expect("request");
    let report: Value = r.json().await.expect("json");
    assert_eq!(report["errors"][0]["code"], "DUPLICATE");
    let list: Vec<Value> = full
        .get(&format!("/v1/campaigns/{id}/contacts"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(list.len(), 1);
    let r = full
        .get(&format!("/v1/campaigns/{id}/contacts?state=bogus"))
        .await;
    assert_eq!(r.status(), 400);
    let r = full.get("/v1/campaigns/nope").await;
    assert_eq!(r.status(), 404);
    let r = full
        .http
        .delete(full.url("/v1/dnc/+12125550999"))
        .bearer_auth(&full.api_key)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
    let r = full.post_json("/v1/dnc", &json!({"phone": "12"})).await;
    assert_eq!(r.status(), 400);
}
