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
            twilio_call_sid: None,
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

/// `voxbridge campaigns create --csv … --watch` against a running server: the progress bar
/// runs until every contact is done; then status, contacts and the do-not-call commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_cli_creates_and_follows_a_campaign() {
    use voxbridge_sim::caller::CallerStep;
    let emu = voxbridge_sim::twilio_api::TwilioEmulatorConfig {
        default_script: vec![CallerStep::Silence { ms: 200 }, CallerStep::Hangup],
        ring_ms: 50,
        ..Default::default()
    };
    let full = spawn_full(Backend::Sqlite, emu, &[("CAMPAIGN_POLL_MS", "100")]).await;
    let open = crate::campaign::zone_at_local_hour(13);
    let dir = std::env::temp_dir().join(format!("vb-cli-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let csv = dir.join("contacts.csv");
    std::fs::write(
        &csv,
        format!(
            "phone,name,timezone,consent\n+12125550401,Ana,{open},yes\n+12125550402,Bob,{open},yes\n+12125550403,Cy,{open},no\n"
        ),
    )
    .expect("csv");
    let policy = dir.join("policy.toml");
    std::fs::write(
        &policy,
        "window_start = \"09:00\"\nwindow_end = \"20:00\"\n",
    )
    .expect("policy");
    let url = full.url("");
    let run = |args: Vec<String>| {
        let url = url.clone();
        let key = full.api_key.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(env!("CARGO_BIN_EXE_voxbridge"))
                .arg("campaigns")
                .args(&args)
                .env("VOXBRIDGE_URL", url)
                .env("VOXBRIDGE_API_KEY", key)
                .env_remove("VOXBRIDGE_CONFIG")
                .output()
                .expect("run voxbridge");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let (ok, out, err) = tokio::time::timeout(
        Duration::from_secs(60),
        run(vec![
            "create".into(),
            "--name".into(),
            "cli".into(),
            "--csv".into(),
            csv.display().to_string(),
            "--policy".into(),
            policy.display().to_string(),
            "--type".into(),
            "notification".into(),
            "--prompt".into(),
            "Tell them the office moved.".into(),
            "--watch".into(),
        ]),
    )
    .await
    .expect("the campaign finishes")
    .expect("join");
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("imported 2 of 3 contacts (1 rejected)"),
        "{out}"
    );
    assert!(out.contains("MISSING_CONSENT"), "{out}");
    assert!(out.contains("[completed]"), "{out}");
    assert!(out.contains("2 completed"), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("created campaign "))
        .expect("id")
        .trim()
        .to_owned();
    let (ok, out, _) = run(vec!["contacts".into(), id.clone()])
        .await
        .expect("join");
    assert!(
        ok && out.contains("+12125550401") && out.contains("completed"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["list".into()]).await.expect("join");
    assert!(ok && out.contains(&id), "{out}");
    let (ok, _, err) = run(vec!["pause".into(), id.clone()]).await.expect("join");
    assert!(!ok && err.contains("INVALID_TRANSITION"), "{err}");
    let (ok, out, err) = run(vec![
        "dnc".into(),
        "add".into(),
        "+12125550499".into(),
        "--reason".into(),
        "asked".into(),
    ])
    .await
    .expect("join");
    assert!(ok, "{err}");
    assert!(
        out.contains("+12125550499 is on the do-not-call list"),
        "{out}"
    );
    let (ok, out, _) = run(vec!["dnc".into(), "list".into()]).await.expect("join");
    assert!(
        ok && out.contains("+12125550499") && out.contains("asked"),
        "{out}"
    );
    let (ok, _, err) = run(vec!["dnc".into(), "remove".into(), "+12125550499".into()])
        .await
        .expect("join");
    assert!(ok, "{err}");
    assert!(!full.store.is_dnc("+12125550499").await.expect("store"));
    let _ = std::fs::remove_dir_all(&dir);
}
