//! Our Standard Webhooks verifier against vectors signed and judged by the
//! official `standardwebhooks` package (cross-checked with the `openai`
//! SDK's verifier) — see `conformance/check_webhooks.py`.
//!
//! - `tests/data/webhook_vectors.json` is a checked-in copy, always checked
//!   (the script verifies it is exactly what it generates);
//! - a freshly generated file is checked too when present:
//!   `$VOXBRIDGE_WEBHOOK_VECTORS`, else `target/conformance/webhook_vectors.json`
//!   (scripts/test.sh writes it just before running this test).

use serde::Deserialize;
use std::path::PathBuf;
use voxbridge_realtime::webhooks::{WebhookEvent, WebhookVerifier, v1_signatures};

#[derive(Deserialize)]
struct File {
    tolerance_secs: i64,
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    name: String,
    secret: String,
    id: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
    body: String,
    now: i64,
    expect: String,
    error: Option<String>,
    #[serde(default)]
    signed_by_secret: bool,
    #[serde(default)]
    event: Option<EventExpect>,
}

#[derive(Deserialize)]
struct EventExpect {
    call_id: String,
    to_number: String,
    from_number: String,
    event_id: String,
    created_at: i64,
}

/// Check every vector; returns (checked, failures).
fn check(text: &str) -> (usize, Vec<String>) {
    let file: File = serde_json::from_str(text).expect("vectors file parses");
    assert!(!file.vectors.is_empty(), "no vectors");
    let mut failures = Vec::new();
    for v in &file.vectors {
        let want: Result<(), String> = match (v.expect.as_str(), &v.error) {
            ("accept", None) => Ok(()),
            ("reject", Some(code)) => Err(code.clone()),
            other => panic!("{}: bad expectation {other:?}", v.name),
        };
        let got: Result<(), String> = WebhookVerifier::new(&v.secret)
            .map(|w| w.with_tolerance(file.tolerance_secs))
            .and_then(|w| {
                let r = w.verify(
                    v.id.as_deref().unwrap_or(""),
                    v.timestamp.as_deref().unwrap_or(""),
                    v.signature.as_deref().unwrap_or(""),
                    v.body.as_bytes(),
                    v.now,
                );
                // our signer reproduces the oracle's signature
                if v.signed_by_secret {
                    let ts: i64 = v
                        .timestamp
                        .as_deref()
                        .and_then(|t| t.parse().ok())
                        .expect("signed vectors have a timestamp");
                    let ours = w.sign(v.id.as_deref().unwrap_or(""), ts, v.body.as_bytes());
                    let theirs = v.signature.as_deref().unwrap_or("");
                    let ours_bytes: Vec<Vec<u8>> = v1_signatures(&ours).collect();
                    if !v1_signatures(theirs).any(|s| ours_bytes.contains(&s)) {
                        failures.push(format!(
                            "{}: our signature {ours} is not among {theirs}",
                            v.name
                        ));
                    }
                }
                r
            })
            .map_err(|e| e.code().to_owned());
        if got != want {
            failures.push(format!("{}: want {want:?}, got {got:?}", v.name));
        }
        if let Some(ev) = &v.event {
            match WebhookEvent::parse(v.body.as_bytes()) {
                Ok(WebhookEvent::RealtimeCallIncoming(call)) => {
                    let got = (
                        call.call_id.as_str(),
                        call.to_number(),
                        call.from_number(),
                        call.event_id.as_str(),
                        call.created_at,
                    );
                    let want = (
                        ev.call_id.as_str(),
                        Some(ev.to_number.clone()),
                        Some(ev.from_number.clone()),
                        ev.event_id.as_str(),
                        ev.created_at,
                    );
                    if got != want {
                        failures.push(format!("{}: event {got:?} != {want:?}", v.name));
                    }
                }
                other => failures.push(format!("{}: event parsed as {other:?}", v.name)),
            }
        }
    }
    (file.vectors.len(), failures)
}

#[test]
fn checked_in_vectors() {
    let (n, failures) = check(include_str!("data/webhook_vectors.json"));
    assert!(
        failures.is_empty(),
        "{n} vectors, failures:\n{}",
        failures.join("\n")
    );
    assert!(n >= 30, "only {n} vectors");
}

#[test]
fn freshly_generated_vectors() {
    let path = std::env::var_os("VOXBRIDGE_WEBHOOK_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/conformance/webhook_vectors.json")
        });
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if std::env::var_os("VOXBRIDGE_WEBHOOK_VECTORS").is_some() => {
            panic!("VOXBRIDGE_WEBHOOK_VECTORS={}: {e}", path.display())
        }
        Err(_) => {
            eprintln!(
                "note: {} not found (run conformance/check_webhooks.py); only the checked-in vectors were checked",
                path.display()
            );
            return;
        }
    };
    let (n, failures) = check(&text);
    assert!(
        failures.is_empty(),
        "{}: {n} vectors, failures:\n{}",
        path.display(),
        failures.join("\n")
    );
    eprintln!("{}: all {n} vectors agree", path.display());
}
