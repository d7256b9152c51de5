use super::*;
use crate::config::AgentConfig;

/// A fresh directory of profile files.
fn dir_with(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vb-agents-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    for (name, text) in files {
        std::fs::write(dir.join(name), text).expect("write");
    }
    dir
}

fn config_for(dir: &Path) -> Config {
    Config {
        agents_dir: dir.to_path_buf(),
        ..Config::default()
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load_dir(files: &[(&str, &str)]) -> Result<Agents, LoadError> {
    let dir = dir_with(files);
    Agents::load(&config_for(&dir), None, &no_env)
}

/// The single error of loading `file` = `text`, as `(source, field, message)`.
fn one_error(file: &str, text: &str) -> ProfileError {
    let err = load_dir(&[(file, text)]).expect_err("must fail");
    assert_eq!(err.errors.len(), 1, "{err}");
    let e = err.errors[0].clone();
    assert!(e.source.ends_with(file), "{e}");
    e
}

fn task(kind: &str, prompt: &str, ctx: &[(&str, &str)]) -> Task {
    Task {
        kind: kind.into(),
        prompt: prompt.into(),
        context: ctx
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

#[test]
fn config_agents_resolve_and_tasks_render() {
    let mut c = Config::default();
    c.agents.push(AgentConfig {
        name: "reminder".into(),
        instructions: Some("You remind people of appointments.".into()),
        voice: Some("cedar".into()),
        numbers: vec!["+14155550123".into()],
        ..AgentConfig::default()
    });
    let agents = Agents::from_config(&c);
    assert_eq!(agents.names(), vec!["default", "reminder"]);
    assert_eq!(agents.for_number("+14155550123").name, "reminder");
    assert_eq!(agents.for_number("+19999999999").name, "default");
    let r = agents.get("reminder").expect("agent");
    assert_eq!(r.voice, "cedar");
    assert_eq!(r.model, "gpt-realtime-2.1");
    assert_eq!(r.tools, vec!["end_call", "opt_out"]);
    // A template without placeholders gets the task appended (as before).
    let t = task(
        "appointment_reminder",
        "Remind Ana of her dentist visit tomorrow at 10.",
        &[("name", "Ana")],
    );
    let text = render_instructions(&r, Some(&t)).expect("renders");
    assert!(text.starts_with("You remind people"));
    assert!(text.contains("Task: Remind Ana"));
    assert!(text.contains("- name: Ana"));
    assert_eq!(
        render_instructions(&r, None).expect("renders"),
        r.instructions
    );
    // The implicit default keeps the settings' texts and has no disclosure.
    let d = agents.get("default").expect("default");
    assert_eq!(
        render_instructions(&d, None).expect("renders"),
        c.instructions
    );
    assert_eq!(d.disclosure, None);
    // A [[agents]] profile discloses by default, first thing in the greeting.
    assert_eq!(
        r.disclosure.as_deref(),
        Some("Hello, this is an AI assistant.")
    );
    let texts = call_texts(&r, None, true).expect("texts");
    let greeting = texts.greeting.expect("greeting");
    assert!(
        greeting.starts_with("Begin by saying, word for word: \"Hello, this is an AI assistant.\""),
        "{greeting}"
    );
    // The caller speaks first: the disclosure opens the first reply.
    let texts = call_texts(&r, None, false).expect("texts");
    assert!(texts.greeting.is_none());
    assert!(
        texts
            .instructions
            .ends_with("with: \"Hello, this is an AI assistant.\"")
    );
}

const REMINDER_TOML: &str = r#"
description = "Dentist reminders"
task_type = "appointment_reminder"
organization = "Bright Smile Dental"
voice = "cedar"
greeting = "Greet {{context.name | default: 'the patient'}} and say why you call."
instructions = """
You work for {{agent.organization}}. {{task.prompt}}
Patient: {{context.name}}, at {{context.time}}.
{{knowledge}}
"""
knowledge = [{ text = "Open 8 to 5." }, { file = "hours.md" }]
tools = ["end_call", "transfer_call"]
transfer = { to = "+14155550100" }
voicemail = { message = "Hi {{context.name}}, please call us back." }
turn_detection = { type = "server_vad", threshold = 0.7 }
transcription = { language = "es" }
max_call_duration_s = 300
silence_timeout_s = 20

[[http_tools]]
name = "lookup"
description = "Look up an appointment"
url = "https://clinic.example.com/api/appointments"
method = "get"
headers = { Authorization = "Bearer ${CLINIC_TOKEN}", X-Env = "${STAGE:-prod}" }
parameters = { type = "object", properties = { id = { type = "string" } }, required = ["id"] }
"#;

const SURVEY_YAML: &str = r#"
name: nps
task_type: survey
organization: Acme
disclosure: "Hi, I'm an AI assistant for {{agent.organization}}, calling with a short survey."
turn_detection:
  type: semantic_vad
  eagerness: low
voicemail:
  action: hang_up
numbers: ["+14155550199"]
"#;

#[test]
fn toml_and_yaml_profiles_load() {
    let dir = dir_with(&[
        ("reminder.toml", REMINDER_TOML),
        ("survey.yaml", SURVEY_YAML),
        ("hours.md", "Closed on Sundays.\n"),
        ("notes.txt", "not a profile"),
        (".hidden.toml", "this = is not loaded"),
    ]);
    let env = |k: &str| (k == "CLINIC_TOKEN").then(|| "s3cret".to_owned());
    let agents = Agents::load(&config_for(&dir), None, &env).expect("loads");
    assert_eq!(agents.names(), vec!["default", "reminder", "nps"]);

    let r = agents.get("reminder").expect("reminder");
    assert_eq!(r.task_type, TaskType::AppointmentReminder);
    assert_eq!(r.voice, "cedar");
    assert_eq!(r.knowledge, "Open 8 to 5.\n\nClosed on Sundays.");
    assert_eq!(r.tools, vec!["end_call", "transfer_call"]);
    assert_eq!(
        r.transfer,
        Some(Transfer {
            to: "+14155550100".into(),
            warm: false,
            conference_intro: None
        })
    );
    assert_eq!(
        r.voicemail.as_ref().map(|v| v.action),
        Some(VoicemailAction::LeaveMessage)
    );
    assert_eq!(r.max_call_duration_s, 300);
    assert_eq!(r.silence_timeout_s, Some(20));
    assert_eq!(
        r.disclosure.as_deref(),
        Some("Hello, this is an AI assistant for Bright Smile Dental.")
    );
    assert!(matches!(
        r.turn_detection,
        Some(TurnDetection::ServerVad { threshold, .. }) if threshold == 0.7
    ));
    let tr = r.transcription.clone().expect("transcription");
    assert_eq!(
        (tr.model.as_str(), tr.language.as_deref()),
        ("gpt-4o-mini-transcribe", Some("es"))
    );
    let h = &r.http_tools[0];
    assert_eq!(h.method, HttpMethod::Get);
    assert_eq!(h.timeout_ms, 5_000);
    assert_eq!(
        h.headers,
        vec![
            ("Authorization".to_owned(), "Bearer s3cret".to_owned()),
            ("X-Env".to_owned(), "prod".to_owned())
        ]
    );
    assert!(
        !format!("{h:?}").contains("s3cret"),
        "Debug hides header values"
    );

    let t = task(
        "appointment_reminder",
        "Confirm the visit.",
        &[("name", "Ana"), ("time", "10am")],
    );
    let text = render_instructions(&r, Some(&t)).expect("renders");
    assert!(text.starts_with("You work for Bright Smile Dental. Confirm the visit.\nPatient: Ana, at 10am.\nOpen 8 to 5."), "{text}");
    assert!(
        !text.contains("# Knowledge"),
        "placed by the template, not appended"
    );
    assert_eq!(
        r.voicemail_message_for(Some(&t))
            .expect("renders")
            .as_deref(),
        Some("Hi Ana, please call us back.")
    );
    assert_eq!(
        r.greeting_for(None).expect("renders"),
        "Greet the patient and say why you call."
    );

    let s = agents.get("nps").expect("survey");
    assert_eq!(s.task_type, TaskType::Survey);
    assert_eq!(
        s.tools,
        vec![
            "end_call",
            "opt_out",
            "record_survey_response",
            "voicemail_detected"
        ]
    );
    assert_eq!(agents.for_number("+14155550199").name, "nps");
    assert!(
        matches!(s.turn_detection, Some(TurnDetection::SemanticVad { ref eagerness, .. }) if eagerness == "low")
    );
    assert_eq!(
        s.disclosure.as_deref(),
        Some("Hi, I'm an AI assistant for Acme, calling with a short survey.")
    );
    // The built-in survey template, rendered for an inbound call (no task).
    let text = render_instructions(&s, None).expect("renders");
    assert!(text.contains("speaking on behalf of Acme"), "{text}");
    assert!(text.contains("record_survey_response"));
    assert!(
        text.contains("Ask the survey questions."),
        "the prompt's default"
    );
}

#[test]
fn a_missing_context_key_is_a_render_error_naming_key_and_agent() {
    let agents = load_dir(&[(
        "reminder.toml",
        "instructions = \"Remind {{context.name}} of {{context.when}}.\"\n",
    )])
    .expect("loads");
    let r = agents.get("reminder").expect("agent");
    let err = render_instructions(&r, Some(&task("custom", "", &[("name", "Ana")])))
        .expect_err("missing key");
    assert_eq!(
        err,
        RenderError::MissingContext {
            agent: "reminder".into(),
            field: "instructions",
            key: "when".into()
        }
    );
    let msg = err.to_string();
    assert!(
        msg.contains("\"reminder\"") && msg.contains("{{context.when}}"),
        "{msg}"
    );
    assert!(check_task(&r, None).is_err());
    // With both keys it renders; the sample task has them all.
    assert!(check_task(&r, Some(&sample_task(&r))).is_ok());
    assert_eq!(
        required_context(&r).into_iter().collect::<Vec<_>>(),
        vec!["name", "when"]
    );
}

#[test]
fn template_errors_are_load_errors_naming_file_and_field() {
    let e = one_error("a.toml", "instructions = \"Hi {{customer.name}}\"\n");
    assert_eq!(e.field, "instructions");
    assert!(
        e.message.contains("unknown placeholder \"customer.name\""),
        "{e}"
    );

    let e = one_error("b.yaml", "greeting: \"Hi {{context.name\"\n");
    assert_eq!(e.field, "greeting");
    assert!(e.message.contains("unclosed"), "{e}");

    let e = one_error("c.toml", "instructions = \"For {{agent.organization}}.\"\n");
    assert_eq!(e.field, "instructions");
    assert!(e.message.contains("organization` is not set"), "{e}");

    // Inbound calls carry no context: a key without default is refused.
    let e = one_error(
        "d.toml",
        "numbers = [\"+14155550111\"]\ninstructions = \"Hi {{context.name}}\"\n",
    );
    assert_eq!(e.field, "instructions");
    assert!(e.message.contains("inbound"), "{e}");
    assert!(
        load_dir(&[(
            "d.toml",
            "numbers = [\"+14155550111\"]\ninstructions = \"Hi {{context.name | default: \\\"there\\\"}}\"\n",
        )])
        .is_ok()
    );

    let e = one_error("e.toml", "disclosure = \"AI for {{context.x}}\"\n");
    assert_eq!(e.field, "disclosure");

    let e = one_error(
        "f.toml",
        "voicemail = { message = \"Call {{task.nope}}\" }\n",
    );
    assert_eq!(e.field, "voicemail.message");
}

#[test]
fn huge_knowledge_file_is_an_error_naming_the_file() {
    let dir = dir_with(&[(
        "kb.toml",
        "knowledge = [{ text = \"small\" }, { file = \"big.md\" }]\n",
    )]);
    std::fs::write(dir.join("big.md"), "x".repeat(100 * 1024)).expect("write");
    let err = Agents::load(&config_for(&dir), None, &no_env).expect_err("too big");
    let e = &err.errors[0];
    assert!(e.source.ends_with("kb.toml"), "{e}");
    assert_eq!(e.field, "knowledge[1].file");
    assert!(e.message.contains("big.md is 100.0 KiB"), "{e}");
    assert!(e.message.contains("64 KiB"), "{e}");

    // Inline text counts too; a missing file is named.
    let e = one_error(
        "inline.toml",
        &format!("knowledge = [{{ text = \"{}\" }}]\n", "y".repeat(70 * 1024)),
    );
    assert_eq!(e.field, "knowledge[0].text");
    let e = one_error("missing.toml", "knowledge = [{ file = \"nope.md\" }]\n");
    assert_eq!(e.field, "knowledge[0].file");
    assert!(e.message.contains("nope.md"), "{e}");
    let e = one_error(
        "both.toml",
        "knowledge = [{ file = \"a\", text = \"b\" }]\n",
    );
    assert_eq!(e.field, "knowledge[0]");
}

#[test]
fn invalid_fields_name_file_and_field() {
    let tool = |extra: &str| {
        format!(
            "[[http_tools]]\nname = \"crm\"\ndescription = \"CRM\"\nurl = \"https://crm.example.com/x\"\n{extra}\n"
        )
    };
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "voice.toml",
            "voice = \"robot\"\n".into(),
            "voice",
            "\"robot\" is not a Realtime voice (one of alloy",
        ),
        (
            "tt.yaml",
            "task_type: sales\n".into(),
            "task_type",
            "\"sales\" is not a task type",
        ),
        (
            "tool.toml",
            "tools = [\"end_call\", \"launch_rockets\"]\n".into(),
            "tools[1]",
            "not a built-in tool",
        ),
        (
            "dup.toml",
            "tools = [\"end_call\", \"end_call\"]\n".into(),
            "tools[1]",
            "listed twice",
        ),
        (
            "name.toml",
            tool("").replace("\"crm\"", "\"bad name!\""),
            "http_tools[0].name",
            "not a valid tool name",
        ),
        (
            "clash.toml",
            tool("").replace("\"crm\"", "\"end_call\""),
            "http_tools[0].name",
            "built-in tool",
        ),
        (
            "url.toml",
            tool("").replace("https://crm.example.com/x", "ftp://crm"),
            "http_tools[0].url",
            "http(s)",
        ),
        (
            "url2.yaml",
            "http_tools:\n  - name: a\n    description: d\n    url: not a url\n".into(),
            "http_tools[0].url",
            "not a URL",
        ),
        (
            "method.toml",
            tool("method = \"FETCH\""),
            "http_tools[0].method",
            "\"FETCH\" is not GET, POST",
        ),
        (
            "env.toml",
            tool("headers = { Authorization = \"Bearer ${CRM_TOKEN}\" }"),
            "http_tools[0].headers.Authorization",
            "CRM_TOKEN is not set",
        ),
        (
            "params.toml",
            tool("parameters = { type = \"string\" }"),
            "http_tools[0].parameters",
            "\"type\": \"object\"",
        ),
        (
            "timeout.toml",
            tool("timeout_ms = 60000"),
            "http_tools[0].timeout_ms",
            "out of range",
        ),
        (
            "transfer.toml",
            "transfer = { to = \"555-1234\" }\n".into(),
            "transfer.to",
            "neither an E.164",
        ),
        (
            "needs.toml",
            "tools = [\"transfer_call\"]\n".into(),
            "tools",
            "transfer_call needs a `transfer`",
        ),
        (
            "vm.toml",
            "voicemail = { action = \"leave_message\" }\n".into(),
            "voicemail.message",
            "required",
        ),
        (
            "vm2.toml",
            "voicemail = { action = \"scream\" }\n".into(),
            "voicemail.action",
            "leave_message or hang_up",
        ),
        (
            "td.toml",
            "turn_detection = { type = \"semantic_vad\", threshold = 0.5 }\n".into(),
            "turn_detection.threshold",
            "server_vad",
        ),
        (
            "td2.toml",
            "turn_detection = { type = \"magic\" }\n".into(),
            "turn_detection.type",
            "\"magic\"",
        ),
        (
            "num.toml",
            "numbers = [\"4155550100\"]\n".into(),
            "numbers[0]",
            "E.164",
        ),
        (
            "lang.toml",
            "transcription = { language = \"English\" }\n".into(),
            "transcription.language",
            "ISO-639-1",
        ),
        (
            "dur.toml",
            "max_call_duration_s = 1\n".into(),
            "max_call_duration_s",
            "out of range",
        ),
        (
            "survey.toml",
            "task_type = \"survey\"\ntools = [\"end_call\"]\n".into(),
            "tools",
            "record_survey_response",
        ),
        (
            "unknown.toml",
            "colour = \"blue\"\n".into(),
            "colour",
            "unknown field",
        ),
        (
            "unknown2.yaml",
            "transfer:\n  to: \"+14155550100\"\n  wram: true\n".into(),
            "transfer.wram",
            "unknown field",
        ),
        (
            "type.toml",
            "max_call_duration_s = \"long\"\n".into(),
            "max_call_duration_s",
            "invalid type",
        ),
        ("syntax.toml", "voice = \n".into(), "", "line 1"),
    ];
    for (file, text, field, msg) in cases {
        let e = one_error(file, &text);
        assert_eq!(e.field, field, "{file}: {e}");
        assert!(e.message.contains(msg), "{file}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(file), "{shown}");
    }
}

#[test]
fn all_errors_are_reported_and_names_are_unique() {
    let err = load_dir(&[
        ("a.toml", "voice = \"robot\"\nmodel = \"\"\n"),
        ("b.toml", "name = \"dup\"\n"),
        ("c.yaml", "name: dup\n"),
        (
            "d.toml",
            "numbers = [\"+14155550100\"]\ninstructions = \"x\"\n",
        ),
        (
            "e.toml",
            "numbers = [\"+14155550100\"]\ninstructions = \"y\"\n",
        ),
    ])
    .expect_err("fails");
    let text = err.to_string();
    assert!(text.contains("a.toml: voice:"), "{text}");
    assert!(text.contains("a.toml: model:"), "{text}");
    assert!(
        text.contains("c.yaml: name: agent \"dup\" is already defined by"),
        "{text}"
    );
    assert!(
        text.contains("e.toml: numbers: +14155550100 is already answered by agent \"d\""),
        "{text}"
    );
    assert_eq!(err.errors.len(), 4, "{text}");
}

#[test]
fn a_file_may_define_default_and_a_missing_dir_is_fine() {
    let agents = load_dir(&[(
        "default.yaml",
        "instructions: You are Max.\ndisclosure: false\n",
    )])
    .expect("loads");
    assert_eq!(agents.names(), vec!["default"]);
    let d = agents.for_number("+10000000000");
    assert_eq!(d.source.rsplit('/').next(), Some("default.yaml"));
    assert_eq!(d.disclosure, None);
    let c = config_for(Path::new("/nonexistent/voxbridge/agents"));
    assert_eq!(
        Agents::load(&c, None, &no_env).expect("loads").names(),
        vec!["default"]
    );
}

#[test]
fn builtin_templates_render_for_every_task_type() {
    for kind in TaskType::ALL {
        let text = format!(
            "task_type = \"{}\"\norganization = \"Metro Rides\"\n",
            kind.as_str()
        );
        let agents = load_dir(&[("a.toml", &text)]).expect("loads");
        let a = agents.get("a").expect("agent");
        let t = task(kind.as_str(), "Call about ride 42.", &[("name", "Ana")]);
        let s = render_instructions(&a, Some(&t)).expect("renders");
        assert!(s.contains("Metro Rides"), "{kind:?}");
        assert!(s.contains("Call about ride 42."), "{kind:?}");
        assert!(s.contains("- name: Ana"), "{kind:?}");
        assert!(!s.contains("{{"), "{kind:?}: {s}");
        // And without a task (inbound).
        let s = render_instructions(&a, None).expect("renders");
        assert!(!s.contains("{{") && s.contains("(none given)"), "{kind:?}");
    }
}

#[test]
fn env_substitution() {
    let env = |k: &str| (k == "A").then(|| "1".to_owned());
    assert_eq!(
        profile::substitute_env("x${A}y${B:-2}z$", &env),
        Ok("x1y2z$".into())
    );
    assert!(
        profile::substitute_env("${B}", &env)
            .expect_err("unset")
            .contains("B is not set")
    );
    assert!(profile::substitute_env("${A", &env).is_err());
    assert!(profile::substitute_env("${1A}", &env).is_err());
}

fn bump(path: &Path, text: &str) {
    // A different length, so the change shows even on a coarse-mtime file system.
    std::fs::write(path, text).expect("write");
}

#[test]
fn registry_reloads_changed_files_and_keeps_the_old_agents_on_a_broken_edit() {
    let dir = dir_with(&[("a.toml", "voice = \"ash\"\n")]);
    let reg = AgentRegistry::with_env(&config_for(&dir), no_env);
    assert!(reg.startup_error().is_none());
    assert_eq!(reg.get("a").expect("a").voice, "ash");
    assert!(reg.reload_if_changed().is_none(), "nothing changed");

    // A changed file and a new one.
    bump(&dir.join("a.toml"), "voice = \"cedar\"   \n");
    bump(&dir.join("b.yaml"), "task_type: notification\n");
    assert_eq!(reg.reload_if_changed(), Some(Ok(3)));
    assert_eq!(reg.get("a").expect("a").voice, "cedar");
    assert_eq!(reg.names(), vec!["default", "a", "b"]);
    let snapshot = reg.current();

    // A broken edit: everything stays as it was (never half-applied).
    bump(&dir.join("a.toml"), "voice = \"alloy\"\n");
    bump(&dir.join("b.yaml"), "task_type: nonsense\n");
    let err = reg
        .reload_if_changed()
        .expect("changed")
        .expect_err("broken");
    assert!(err.to_string().contains("b.yaml: task_type:"), "{err}");
    assert_eq!(reg.get("a").expect("a").voice, "cedar");
    assert!(Arc::ptr_eq(&snapshot, &reg.current()));
    assert!(
        reg.reload_if_changed().is_none(),
        "the broken state was seen"
    );

    // Fixed: applied. Then a removed file goes away.
    bump(&dir.join("b.yaml"), "task_type: survey\n");
    assert_eq!(reg.reload_if_changed(), Some(Ok(3)));
    assert_eq!(reg.get("a").expect("a").voice, "alloy");
    std::fs::remove_file(dir.join("b.yaml")).expect("rm");
    assert_eq!(reg.reload_if_changed(), Some(Ok(2)));
    assert!(reg.get("b").is_none());
}

#[test]
fn registry_watches_knowledge_files_and_starts_without_bad_profiles() {
    let dir = dir_with(&[
        ("kb.toml", "knowledge = [{ file = \"facts.md\" }]\n"),
        ("facts.md", "We open at 9."),
    ]);
    let reg = AgentRegistry::with_env(&config_for(&dir), no_env);
    assert_eq!(reg.get("kb").expect("kb").knowledge, "We open at 9.");
    bump(&dir.join("facts.md"), "We open at 10 now.");
    assert_eq!(reg.reload_if_changed(), Some(Ok(2)));
    assert_eq!(reg.get("kb").expect("kb").knowledge, "We open at 10 now.");

    let bad = dir_with(&[("x.toml", "voice = \"robot\"\n")]);
    let reg = AgentRegistry::with_env(&config_for(&bad), no_env);
    let err = reg.startup_error().expect("startup error");
    assert!(err.to_string().contains("x.toml: voice:"), "{err}");
    assert_eq!(reg.names(), vec!["default"]);
}

#[test]
fn config_validation_checks_agents_tables() {
    let dir = std::env::temp_dir().join(format!("vbcfg-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("dir");
    let p = dir.join("voxbridge.toml");
    std::fs::write(
        &p,
        "[[agents]]\nname = \"x\"\nvoice = \"robot\"\n\n[[agents]]\nname = \"y\"\ninstructions = \"{{oops}}\"\n",
    )
    .expect("write");
    let err = Config::from_sources(Some(&p), |_| None)
        .expect_err("invalid")
        .to_string();
    assert!(err.contains("[[agents]] \"x\": voice: \"robot\""), "{err}");
    assert!(err.contains("[[agents]] \"y\": instructions:"), "{err}");
    let err = Config::from_sources(None, |k| (k == "INSTRUCTIONS").then(|| "{{x}}".into()))
        .expect_err("invalid")
        .to_string();
    assert!(err.contains("settings: INSTRUCTIONS:"), "{err}");
}
