//! The `voxbridge` binary's database commands and `voxbridge call`.

use crate::helpers::*;
use std::process::Command;
use std::time::Duration;

fn voxbridge(db: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voxbridge"))
        .args(args)
        .env("DATABASE_URL", db)
        .env_remove("VOXBRIDGE_CONFIG")
        .output()
        .expect("run voxbridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_keys_and_calls_commands() {
    let db = fresh_database(Backend::Sqlite).await;
    let (ok, out, err) = voxbridge(&db, &["migrate"]);
    assert!(ok, "{err}");
    assert!(out.contains("sqlite is up to date"), "{out}");

    let (ok, out, err) = voxbridge(&db, &["keys", "create", "--name", "ops"]);
    assert!(ok, "{err}");
    let secret = out
        .lines()
        .find_map(|l| l.split("): ").nth(1))
        .expect("secret line")
        .trim()
        .to_owned();
    assert!(secret.starts_with("vbk_"), "{out}");
    let store = voxbridge_store::Store::connect(&db).await.expect("store");
    let key = store
        .verify_api_key(&secret)
        .await
        .expect("verify")
        .expect("valid key");
    assert_eq!(key.name, "ops");

    let (ok, out, _) = voxbridge(&db, &["keys", "list"]);
    assert!(ok && out.contains("ops") && out.contains("active"), "{out}");
    assert!(!out.contains(&secret), "list must not show secrets");
    let (ok, out, err) = voxbridge(&db, &["keys", "revoke", &key.id]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"));
    assert!(
        store
            .verify_api_key(&secret)
            .await
            .expect("verify")
            .is_none()
    );
    let (ok, _, err) = voxbridge(&db, &["keys", "revoke", &key.id]);
    assert!(!ok && err.contains("no active key"), "{err}");

    store
        .create_call(&voxbridge_store::NewCall {
            id: "0190aaaa-0000-7000-8000-0000000000bb".into(),
            direction: "outbound".into(),
            from_number: FROM_NUMBER.into(),
            to_number: "+14155550100".into(),
            agent: "default".into(),
            task: None,
            status: "completed".into(),
            api_key_id: None,
            idempotency_key: None,
            created_at_ms: 1_700_000_000_000,
        })
        .await
        .expect("call");
    store
        .add_transcript(
            "0190aaaa-0000-7000-8000-0000000000bb",
            "agent",
            "Hello Ana, this is an AI assistant.",
            None,
            None,
            1_700_000_001_000,
        )
        .await
        .expect("transcript");
    let (ok, out, _) = voxbridge(&db, &["calls", "list"]);
    assert!(
        ok && out.contains("+14155550100") && out.contains("completed"),
        "{out}"
    );
    let (ok, out, _) = voxbridge(
        &db,
        &["calls", "show", "0190aaaa-0000-7000-8000-0000000000bb"],
    );
    assert!(ok && out.contains("Hello Ana"), "{out}");
    let (ok, out, _) = voxbridge(&db, &["calls", "export"]);
    assert!(ok, "{out}");
    let line: serde_json::Value =
        serde_json::from_str(out.lines().next().expect("a line")).expect("json");
    assert_eq!(line["call"]["to_number"], "+14155550100");
    assert_eq!(
        line["transcript"][0]["text"],
        "Hello Ana, this is an AI assistant."
    );
    let (ok, _, err) = voxbridge(&db, &["calls", "show", "nope"]);
    assert!(!ok && err.contains("no call"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_command_prints_status_and_transcript_until_the_end() {
    let full = spawn_full(
        Backend::Sqlite,
        voxbridge_sim::twilio_api::TwilioEmulatorConfig {
            default_script: callee_script(),
            ring_ms: 100,
            ..Default::default()
        },
        &[],
    )
    .await;
    let url = full.url("");
    let key = full.api_key.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_voxbridge"))
            .args([
                "call",
                "+14155550100",
                "--prompt",
                "Remind Ana of her visit.",
                "--context",
                "name=Ana",
                "--url",
                &url,
            ])
            .env("VOXBRIDGE_API_KEY", key)
            .output()
            .expect("run voxbridge call")
    });
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("call command ends")
        .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("status  ringing"), "{stdout}");
    assert!(stdout.contains("agent "), "{stdout}");
    assert!(stdout.contains("caller "), "{stdout}");
    assert!(stdout.contains("status  completed"), "{stdout}");
}
