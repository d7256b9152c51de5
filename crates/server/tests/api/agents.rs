//! Agent profiles end to end: a profile file shapes a real call, a task that
//! does not render is refused before dialing, edits are picked up by the
//! running server (and broken ones are not), and `voxbridge agents check`.

use crate::helpers::*;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use voxbridge_sim::twilio_api::TwilioEmulatorConfig;

fn profiles(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vb-agents-api-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    dir
}

const REMINDER: &str = r#"
task_type = "appointment_reminder"
organization = "Bright Smile Dental"
voice = "cedar"
greeting = "Ask for {{context.name}} and mention the appointment."
knowledge = [{ text = "Parking is on 8th Street." }]

[turn_detection]
type = "semantic_vad"
eagerness = "low"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_shapes_the_call_and_a_task_that_does_not_render_is_refused() {
    let dir = profiles(&[("reminder.toml", REMINDER)]);
    let full = spawn_full(
        Backend::Sqlite,
        TwilioEmulatorConfig {
            default_script: callee_script(),
            ring_ms: 100,
            ..TwilioEmulatorConfig::default()
        },
        &[("AGENTS_DIR", dir.to_str().expect("utf-8"))],
    )
    .await;

    // The greeting needs context.name: without it, no call is placed.
    let resp = full
        .post_json(
            "/v1/calls",
            &json!({"to": "+14155550100", "agent": "reminder",
                    "task": {"type": "appointment_reminder", "prompt": "Remind about the visit."}}),
        )
        .await;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["code"], "INVALID_TASK");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("\"reminder\"") && msg.contains("{{context.name}}"),
        "{msg}"
    );

    let resp = full
        .post_json(
            "/v1/calls",
            &json!({"to": "+14155550100", "agent": "reminder",
                    "task": {"type": "appointment_reminder",
                             "prompt": "Remind Ana of her cleaning on Tuesday at 10.",
                             "context": {"name": "Ana"}}}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let created: Value = resp.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_owned();
    let call = full.wait_terminal(&id, Duration::from_secs(30)).await;
    assert_eq!(call["status"], "completed", "{call:#}");
    assert_eq!(call["agent"], "reminder");

    let updates = full.app.sim.events_of_type("session.update");
    let s = &updates[0]["session"];
    let instructions = s["instructions"].as_str().unwrap_or_default();
    assert!(
        instructions.contains("on behalf of Bright Smile Dental"),
        "{instructions}"
    );
    assert!(instructions.contains("Remind Ana of her cleaning on Tuesday at 10."));
    assert!(instructions.contains("- name: Ana"));
    assert!(instructions.contains("# Knowledge\n") && instructions.contains("Parking is on 8th"));
    assert_eq!(s["audio"]["output"]["voice"], "cedar");
    assert_eq!(
        s["audio"]["input"]["turn_detection"]["type"],
        "semantic_vad"
    );
    assert_eq!(s["audio"]["input"]["turn_detection"]["eagerness"], "low");

    // The disclosure is the first thing the agent is told to say.
    let creates = full.app.sim.events_of_type("response.create");
    let greeting = creates[0]["response"]["instructions"]
        .as_str()
        .unwrap_or_default();
    assert!(
        greeting.starts_with(
            "Begin by saying, word for word: \"Hello, this is an AI assistant for Bright Smile Dental.\""
        ),
        "{greeting}"
    );
    assert!(greeting.contains("Ask for Ana"), "{greeting}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_running_server_picks_up_edits_and_ignores_broken_ones() {
    let dir = profiles(&[("helper.yaml", "voice: ash\n")]);
    let app = spawn_app_with(
        sim_config(),
        &[("AGENTS_DIR", dir.to_str().expect("utf-8"))],
    )
    .await;
    assert_eq!(app.state.agents.get("helper").expect("helper").voice, "ash");

    // An edit and a new file: picked up by the poller (every 2 s).
    std::fs::write(dir.join("helper.yaml"), "voice: coral   # changed\n").expect("write");
    std::fs::write(dir.join("second.toml"), "task_type = \"survey\"\n").expect("write");
    let reloaded = eventually(Duration::from_secs(10), || {
        app.state
            .agents
            .get("helper")
            .is_some_and(|a| a.voice == "coral")
            && app.state.agents.get("second").is_some()
    })
    .await;
    assert!(reloaded, "agents: {:?}", app.state.agents.names());

    // A broken edit: the previous agents stay, whole.
    let before = app.state.agents.current();
    std::fs::write(dir.join("helper.yaml"), "voice: alloy\n").expect("write");
    std::fs::write(dir.join("second.toml"), "task_type = \"nonsense\"\n").expect("write");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(std::sync::Arc::ptr_eq(&before, &app.state.agents.current()));
    assert_eq!(
        app.state.agents.get("helper").expect("helper").voice,
        "coral"
    );

    // Fixed: applied.
    std::fs::write(dir.join("second.toml"), "task_type = \"notification\"\n").expect("write");
    let fixed = eventually(Duration::from_secs(10), || {
        app.state
            .agents
            .get("helper")
            .is_some_and(|a| a.voice == "alloy")
    })
    .await;
    assert!(fixed);
}

#[tokio::test]
async fn the_server_refuses_to_start_with_invalid_profiles() {
    let dir = profiles(&[("bad.toml", "voice = \"robot\"\n")]);
    let config = voxbridge::Config::from_sources(None, |k| {
        (k == "AGENTS_DIR").then(|| dir.to_string_lossy().into_owned())
    })
    .expect("config");
    let state = voxbridge::App::build(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let err = voxbridge::app::run(state, listener, std::future::pending())
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("bad.toml: voice: \"robot\" is not a Realtime voice"),
        "{text}"
    );
}

fn agents_cli(args: &[&str], cwd: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_voxbridge"))
        .arg("agents")
        .args(args)
        .current_dir(cwd)
        .env_remove("VOXBRIDGE_CONFIG")
        .env_remove("AGENTS_DIR")
        .output()
        .expect("run voxbridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn agents_check_and_list() {
    let dir = profiles(&[
        ("reminder.toml", REMINDER),
        ("survey.yaml", "task_type: survey\nvoice: sage\n"),
    ]);
    let (ok, out, err) = agents_cli(&["check", dir.to_str().expect("utf-8")], &dir);
    assert!(ok, "{out}{err}");
    let lines: Vec<&str> = out.lines().filter(|l| l.starts_with("ok")).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(
        out.contains("reminder") && out.contains("appointment_reminder") && out.contains("cedar"),
        "{out}"
    );
    assert!(out.contains("record_survey_response"), "{out}");

    // With AGENTS_DIR's default (`agents` in the working directory).
    let parent = profiles(&[]);
    std::fs::create_dir_all(parent.join("agents")).expect("dir");
    std::fs::write(parent.join("agents/one.toml"), "voice = \"echo\"\n").expect("write");
    let (ok, out, err) = agents_cli(&["list"], &parent);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("one ") && l.contains("echo")),
        "{out}"
    );

    // Invalid: non-zero, and every error names its file and field.
    std::fs::write(
        dir.join("broken.yaml"),
        "voice: robot\ntools: [end_call, fly]\n",
    )
    .expect("write");
    std::fs::write(
        dir.join("tpl.toml"),
        "instructions = \"Hello {{contxt.name}}\"\n",
    )
    .expect("write");
    let (ok, _, err) = agents_cli(&["check", dir.to_str().expect("utf-8")], &dir);
    assert!(!ok);
    assert!(
        err.contains("broken.yaml: voice: \"robot\" is not a Realtime voice"),
        "{err}"
    );
    assert!(
        err.contains("broken.yaml: tools[1]: \"fly\" is not a built-in tool"),
        "{err}"
    );
    assert!(
        err.contains("tpl.toml: instructions: line 1: {{contxt.name}}: unknown placeholder"),
        "{err}"
    );
    assert!(err.contains("3 error(s)"), "{err}");
}

#[test]
fn the_example_profiles_pass_agents_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let examples = root.join("agents");
    let cwd = profiles(&[]);
    let (ok, out, err) = agents_cli(&["check", examples.to_str().expect("utf-8")], &cwd);
    assert!(ok, "{out}{err}");
    for name in [
        "appointment_reminder",
        "survey",
        "notification",
        "transit_booking",
        "custom",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(&format!("ok  {name} "))),
            "{name}: {out}"
        );
    }
    let (ok, out, err) = agents_cli(
        &[
            "show",
            "appointment_reminder",
            "--dir",
            examples.to_str().expect("utf-8"),
        ],
        &cwd,
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("Bright Smile Dental") && out.contains("<name>"),
        "{out}"
    );
}
