//! Reading profile files and resolving an [`AgentConfig`] into an [`Agent`],
//! with every error naming its file (or table) and field.

use super::template::{Template, Var};
use super::{
    Agent, Agents, BUILTIN_TOOLS, HttpMethod, HttpTool, TaskType, Transfer, Voicemail,
    VoicemailAction, builtin,
};
use crate::config::{AgentConfig, Config, DisclosureConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use voxbridge_realtime::session::{Transcription, TurnDetection, VOICES};

/// Knowledge per profile, all snippets together.
pub const MAX_KNOWLEDGE_BYTES: u64 = 64 * 1024;
/// Largest profile file read.
pub const MAX_PROFILE_BYTES: u64 = 1024 * 1024;
/// HTTP tool timeout bounds.
pub const DEFAULT_TOOL_TIMEOUT_MS: u64 = 5_000;
pub const MAX_TOOL_TIMEOUT_MS: u64 = 30_000;

/// One problem in one profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileError {
    /// `agents/reminder.toml`, `[[agents]] "x"` or `settings`.
    pub source: String,
    /// `voice`, `http_tools[0].url`, … (empty when about the whole file).
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ProfileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: {}: {}", self.source, self.field, self.message)
        }
    }
}

/// Agent profiles that did not load: every error found, one a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub errors: Vec<ProfileError>,
    /// Knowledge files read, so that fixing one triggers a reload.
    pub(super) watched: Vec<PathBuf>,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// The profile files of `dir`: `*.toml`, `*.yaml`, `*.yml`, by name;
/// dotfiles skipped. A missing directory has none.
pub(super) fn profile_files(dir: &Path) -> Result<Vec<PathBuf>, ProfileError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ProfileError {
                source: dir.display().to_string(),
                field: String::new(),
                message: format!("cannot read the agents directory (AGENTS_DIR): {e}"),
            });
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or(".");
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
            !name.starts_with('.') && matches!(ext, "toml" | "yaml" | "yml") && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Parse one profile file (TOML or YAML by extension).
pub(super) fn parse_file(path: &Path) -> Result<AgentConfig, ProfileError> {
    let source = path.display().to_string();
    let fail = |field: String, message: String| ProfileError {
        source: source.clone(),
        field,
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| fail(String::new(), e.to_string()))?;
    if meta.len() > MAX_PROFILE_BYTES {
        return Err(fail(
            String::new(),
            format!(
                "the file is {} bytes; a profile may have at most {MAX_PROFILE_BYTES} (put long texts in knowledge files)",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(String::new(), e.to_string()))?;
    let yaml = matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    );
    parse_text(&text, yaml).map_err(|(field, message)| fail(field, message))
}

/// Parse a profile's text; errors are `(field, message)`.
pub(super) fn parse_text(text: &str, yaml: bool) -> Result<AgentConfig, (String, String)> {
    if text.trim().is_empty() {
        return Ok(AgentConfig::default());
    }
    let result = if yaml {
        let de = yaml_serde::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.into_inner().to_string();
            // The YAML error may already start with the path.
            let msg = match msg.split_once(": ") {
                Some((prefix, rest))
                    if !prefix.is_empty()
                        && !prefix.contains(' ')
                        && (path == prefix
                            || path.starts_with(&format!("{prefix}."))
                            || path.starts_with(&format!("{prefix}["))) =>
                {
                    rest.to_owned()
                }
                _ => msg,
            };
            (path, msg)
        })
    } else {
        match toml::Deserializer::parse(text) {
            Ok(de) => serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let inner = e.into_inner();
                (path, toml_message(text, &inner))
            }),
            Err(e) => Err((String::new(), toml_message(text, &e))),
        }
    };
    result.map_err(|(path, message)| {
        // serde names an unknown field in the message, at its parent's path.
        let unknown = message
            .find("unknown field `")
            .and_then(|i| message[i + "unknown field `".len()..].split('`').next());
        let field = match (path.as_str(), unknown) {
            ("." | "", Some(u)) => u.to_owned(),
            (p, Some(u)) if p != u && !p.ends_with(&format!(".{u}")) => format!("{p}.{u}"),
            (".", None) => String::new(),
            (p, _) => p.to_owned(),
        };
        (field, message)
    })
}

/// A TOML error as one line: its message and line number.
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let line = e
        .span()
        .and_then(|s| text.get(..s.start))
        .map(|before| before.matches('\n').count() + 1);
    let msg = e.message().trim().replace('\n', " ");
    match line {
        Some(l) => format!("{msg} (line {l})"),
        None => msg,
    }
}

/// Resolves one profile, collecting every error.
struct Resolver<'a> {
    source: String,
    base_dir: PathBuf,
    config: &'a Config,
    env: &'a dyn Fn(&str) -> Option<String>,
    errors: Vec<ProfileError>,
    watched: Vec<PathBuf>,
}

impl Resolver<'_> {
    fn err(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ProfileError {
            source: self.source.clone(),
            field: field.into(),
            message: message.into(),
        });
    }
}

fn is_tool_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn is_agent_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// `+` and 7 to 15 digits, not starting with 0.
pub(super) fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (7..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

fn is_sip_uri(s: &str) -> bool {
    let rest = s.strip_prefix("sip:").or_else(|| s.strip_prefix("sips:"));
    rest.is_some_and(|r| {
        let host = r.rsplit_once('@').map_or(r, |(_, h)| h);
        !host.is_empty()
            && !r.chars().any(|c| c.is_whitespace() || c.is_control())
            && !r.starts_with('@')
    })
}

/// Substitute `${NAME}` and `${NAME:-fallback}` from `env`.
pub(super) fn substitute_env(
    s: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(end) = after.find('}') else {
            return Err("unclosed `${` (write `${NAME}`)".into());
        };
        let inner = &after[..end];
        let (name, fallback) = match inner.split_once(":-") {
            Some((n, f)) => (n, Some(f)),
            None => (inner, None),
        };
        let valid = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return Err(format!(
                "`${{{inner}}}` is not a valid variable reference (`${{NAME}}` with letters, digits, _)"
            ));
        }
        match (env(name), fallback) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(f)) => out.push_str(f),
            (None, None) => {
                return Err(format!(
                    "${{{name}}}: environment variable {name} is not set"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The `default` agent derived from the settings (INSTRUCTIONS, GREETING,
/// VOICE, …). It has no disclosure line of its own: GREETING's default
/// already makes it say that it is an AI assistant.
pub(super) fn implicit_default(c: &Config) -> Agent {
    Agent {
        name: "default".into(),
        source: "settings".into(),
        description: None,
        task_type: TaskType::Custom,
        organization: None,
        instructions: c.instructions.clone(),
        greeting: c.greeting.clone(),
        disclosure: None,
        voice: c.voice.clone(),
        model: c.openai_model.clone(),
        turn_detection: c.turn_detection(),
        transcription: c.transcription(),
        knowledge: String::new(),
        tools: vec!["end_call".into(), "opt_out".into()],
        http_tools: Vec::new(),
        transfer: None,
        voicemail: None,
        max_call_duration_s: c.max_call_duration_s,
        silence_timeout_s: None,
        numbers: Vec::new(),
    }
}

/// Load the `[[agents]]` of `c`, the files of `dir` (if given) and the
/// implicit default; all or nothing.
pub(super) fn load(
    c: &Config,
    dir: Option<&Path>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Agents, LoadError> {
    let mut errors = Vec::new();
    let mut watched = Vec::new();
    let mut agents: Vec<Agent> = Vec::new();
    let config_dir = c.config_dir.clone().unwrap_or_else(|| ".".into());

    // The implicit default's texts are templates too.
    {
        let mut r = Resolver {
            source: "settings".into(),
            base_dir: config_dir.clone(),
            config: c,
            env,
            errors: Vec::new(),
            watched: Vec::new(),
        };
        let d = implicit_default(c);
        check_templates(
            &mut r,
            &d,
            &[("INSTRUCTIONS", &d.instructions), ("GREETING", &d.greeting)],
        );
        errors.append(&mut r.errors);
    }

    for (i, a) in c.agents.iter().enumerate() {
        let source = if a.name.is_empty() {
            format!("[[agents]] #{}", i + 1)
        } else {
            format!("[[agents]] {:?}", a.name)
        };
        let mut r = Resolver {
            source,
            base_dir: config_dir.clone(),
            config: c,
            env,
            errors: Vec::new(),
            watched: Vec::new(),
        };
        let agent = resolve(&mut r, a, None);
        errors.append(&mut r.errors);
        watched.append(&mut r.watched);
        agents.extend(agent);
    }

    if let Some(dir) = dir {
        match profile_files(dir) {
            Ok(files) => {
                for path in files {
                    let cfg = match parse_file(&path) {
                        Ok(cfg) => cfg,
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    };
                    let stem = path
                        .file_stem()
                        .and_then(|s| s.to_str())
                        .unwrap_or_default()
                        .to_owned();
                    let mut r = Resolver {
                        source: path.display().to_string(),
                        base_dir: path.parent().map_or_else(|| ".".into(), Path::to_path_buf),
                        config: c,
                        env,
                        errors: Vec::new(),
                        watched: Vec::new(),
                    };
                    let agent = resolve(&mut r, &cfg, Some(&stem));
                    errors.append(&mut r.errors);
                    watched.append(&mut r.watched);
                    agents.extend(agent);
                }
            }
            Err(e) => errors.push(e),
        }
    }

    // Names and numbers are unique across all sources.
    let mut by_name: HashMap<String, String> = HashMap::new();
    let mut by_number: HashMap<String, String> = HashMap::new();
    for a in &agents {
        if let Some(first) = by_name.insert(a.name.clone(), a.source.clone()) {
            errors.push(ProfileError {
                source: a.source.clone(),
                field: "name".into(),
                message: format!("agent {:?} is already defined by {first}", a.name),
            });
        }
        for n in &a.numbers {
            if let Some(first) = by_number.get(n) {
                errors.push(ProfileError {
                    source: a.source.clone(),
                    field: "numbers".into(),
                    message: format!("{n} is already answered by agent {first}"),
                });
            } else {
                by_number.insert(n.clone(), format!("{:?} ({})", a.name, a.source));
            }
        }
    }
    if !errors.is_empty() {
        return Err(LoadError { errors, watched });
    }
    if !agents.iter().any(|a| a.name == "default") {
        agents.insert(0, implicit_default(c));
    }
    Ok(Agents {
        agents: agents.into_iter().map(Arc::new).collect(),
        watched,
    })
}

/// Check the templates of `agent` (parse, known placeholders, values known
/// at load, inbound calls without context). `fields` pairs a field name
/// with its template text.
fn check_templates(r: &mut Resolver<'_>, agent: &Agent, fields: &[(&str, &str)]) {
    let inbound = !agent.numbers.is_empty() || agent.name == "default";
    for (field, src) in fields {
        let t = match Template::parse(src) {
            Ok(t) => t,
            Err(e) => {
                r.err(*field, e.0);
                continue;
            }
        };
        for (var, has_default) in t.vars() {
            if has_default {
                continue;
            }
            match var {
                Var::AgentOrganization if agent.organization.is_none() => r.err(
                    *field,
                    "uses {{agent.organization}} but `organization` is not set \
                     (set it, or write {{agent.organization | default: \"…\"}})",
                ),
                Var::AgentDescription if agent.description.is_none() => r.err(
                    *field,
                    "uses {{agent.description}} but `description` is not set",
                ),
                Var::Context(k) if inbound => r.err(
                    *field,
                    format!(
                        "uses {{{{context.{k}}}}} without a default, but agent {:?} answers \
                         inbound calls (numbers, or as `default`), which carry no context; \
                         write {{{{context.{k} | default: \"…\"}}}}",
                        agent.name
                    ),
                ),
                _ => {}
            }
        }
    }
}

fn resolve(r: &mut Resolver<'_>, a: &AgentConfig, stem: Option<&str>) -> Option<Agent> {
    let c = r.config;
    let before = r.errors.len();

    let name = if a.name.trim().is_empty() {
        stem.unwrap_or_default().to_owned()
    } else {
        a.name.trim().to_owned()
    };
    if !is_agent_name(&name) {
        r.err(
            "name",
            if name.is_empty() {
                "required".to_owned()
            } else {
                format!("{name:?} is not a valid agent name (1 to 64 letters, digits, _ - .)")
            },
        );
    }
    let nonempty = |s: &Option<String>| {
        s.as_ref()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let description = nonempty(&a.description);
    let organization = nonempty(&a.organization);

    let task_type = match a.task_type.as_deref() {
        None => TaskType::Custom,
        Some(t) => TaskType::parse(t.trim()).unwrap_or_else(|| {
            r.err(
                "task_type",
                format!(
                    "{t:?} is not a task type (one of {})",
                    TaskType::ALL.map(TaskType::as_str).join(", ")
                ),
            );
            TaskType::Custom
        }),
    };

    let voice = a.voice.clone().unwrap_or_else(|| c.voice.clone());
    if !VOICES.contains(&voice.as_str()) {
        r.err(
            "voice",
            format!(
                "{voice:?} is not a Realtime voice (one of {})",
                VOICES.join(", ")
            ),
        );
    }
    let model = a.model.clone().unwrap_or_else(|| c.openai_model.clone());
    if model.trim().is_empty() || model.chars().any(char::is_whitespace) {
        r.err("model", format!("{model:?} is not a model name"));
    }

    let turn_detection = resolve_turn_detection(r, a);
    let transcription = resolve_transcription(r, a);
    let knowledge = resolve_knowledge(r, a);

    // Tools.
    let tools: Vec<String> = match &a.tools {
        Some(list) => {
            let mut seen = Vec::new();
            for (i, t) in list.iter().enumerate() {
                if !BUILTIN_TOOLS.contains(&t.as_str()) {
                    r.err(
                        format!("tools[{i}]"),
                        format!(
                            "{t:?} is not a built-in tool (one of {}); declare HTTP tools under http_tools",
                            BUILTIN_TOOLS.join(", ")
                        ),
                    );
                } else if seen.contains(t) {
                    r.err(format!("tools[{i}]"), format!("{t:?} is listed twice"));
                } else {
                    seen.push(t.clone());
                }
            }
            seen
        }
        None => {
            let mut t = vec!["end_call".to_owned(), "opt_out".to_owned()];
            if task_type == TaskType::Survey {
                t.push("record_survey_response".into());
            }
            if a.transfer.is_some() {
                t.push("transfer_call".into());
            }
            if a.voicemail.is_some() {
                t.push("voicemail_detected".into());
            }
            t
        }
    };
    let http_tools = resolve_http_tools(r, a);

    // Transfer.
    let transfer = a.transfer.as_ref().map(|t| {
        let to = t.to.trim().to_owned();
        if to.is_empty() {
            r.err("transfer.to", "required: an E.164 number or a sip: URI");
        } else if !is_e164(&to) && !is_sip_uri(&to) {
            r.err(
                "transfer.to",
                format!("{to:?} is neither an E.164 number (+14155550123) nor a sip: URI"),
            );
        }
        if t.conference_intro.is_some() && !t.warm {
            r.err(
                "transfer.conference_intro",
                "only used by a warm transfer: set `warm = true` or remove it",
            );
        }
        Transfer {
            to,
            warm: t.warm,
            conference_intro: nonempty(&t.conference_intro),
        }
    });
    if tools.iter().any(|t| t == "transfer_call") && transfer.is_none() {
        r.err(
            "tools",
            "transfer_call needs a `transfer` section with `to` (a number or sip: URI)",
        );
    }

    // Voicemail.
    let voicemail = a.voicemail.as_ref().map(|v| {
        let message = nonempty(&v.message);
        let action = match v.action.as_deref().map(str::trim) {
            None if message.is_some() => VoicemailAction::LeaveMessage,
            None => VoicemailAction::HangUp,
            Some("leave_message") => VoicemailAction::LeaveMessage,
            Some("hang_up") => VoicemailAction::HangUp,
            Some(other) => {
                r.err(
                    "voicemail.action",
                    format!("{other:?} is not an action (leave_message or hang_up)"),
                );
                VoicemailAction::HangUp
            }
        };
        if action == VoicemailAction::LeaveMessage && message.is_none() {
            r.err(
                "voicemail.message",
                "required when action = \"leave_message\"",
            );
        }
        Voicemail { action, message }
    });

    // Limits.
    let max_call_duration_s = a.max_call_duration_s.unwrap_or(c.max_call_duration_s);
    if a.max_call_duration_s.is_some() && !(10..=14_400).contains(&max_call_duration_s) {
        r.err(
            "max_call_duration_s",
            format!("{max_call_duration_s} is out of range (10 to 14400 seconds)"),
        );
    }
    if let Some(s) = a.silence_timeout_s
        && !(1..=3_600).contains(&s)
    {
        r.err(
            "silence_timeout_s",
            format!("{s} is out of range (1 to 3600 seconds)"),
        );
    }

    // Numbers.
    let mut numbers = Vec::new();
    for (i, n) in a.numbers.iter().enumerate() {
        let n = n.trim();
        if !is_e164(n) {
            r.err(
                format!("numbers[{i}]"),
                format!("{n:?} is not an E.164 number (like +14155550123)"),
            );
        } else if numbers.iter().any(|m| m == n) {
            r.err(format!("numbers[{i}]"), format!("{n} is listed twice"));
        } else {
            numbers.push(n.to_owned());
        }
    }

    // Templates.
    let default_instructions = a.instructions.is_none();
    let instructions = a
        .instructions
        .clone()
        .unwrap_or_else(|| builtin::template(task_type));
    if instructions.trim().is_empty() {
        r.err(
            "instructions",
            "empty (leave it out to use the task type's built-in template)",
        );
    }
    if task_type == TaskType::Survey
        && default_instructions
        && !tools.iter().any(|t| t == "record_survey_response")
    {
        r.err(
            "tools",
            "the built-in survey template records answers with record_survey_response: enable it, \
             or write your own instructions",
        );
    }
    let greeting = a.greeting.clone().unwrap_or_else(|| c.greeting.clone());
    let disclosure_src = match &a.disclosure {
        None | Some(DisclosureConfig::On(true)) => Some(if organization.is_some() {
            "Hello, this is an AI assistant for {{agent.organization}}.".to_owned()
        } else {
            "Hello, this is an AI assistant.".to_owned()
        }),
        Some(DisclosureConfig::On(false)) => None,
        Some(DisclosureConfig::Text(t)) if t.trim().is_empty() => None,
        Some(DisclosureConfig::Text(t)) => Some(t.trim().to_owned()),
    };

    let mut agent = Agent {
        name,
        source: r.source.clone(),
        description,
        task_type,
        organization,
        instructions,
        greeting,
        disclosure: None,
        voice,
        model,
        turn_detection,
        transcription,
        knowledge,
        tools,
        http_tools,
        transfer,
        voicemail,
        max_call_duration_s,
        silence_timeout_s: a.silence_timeout_s,
        numbers,
    };
    let mut fields: Vec<(&str, String)> = vec![
        ("instructions", agent.instructions.clone()),
        ("greeting", agent.greeting.clone()),
    ];
    if let Some(m) = agent.voicemail.as_ref().and_then(|v| v.message.clone()) {
        fields.push(("voicemail.message", m));
    }
    if let Some(m) = agent
        .transfer
        .as_ref()
        .and_then(|t| t.conference_intro.clone())
    {
        fields.push(("transfer.conference_intro", m));
    }
    let borrowed: Vec<(&str, &str)> = fields.iter().map(|(f, s)| (*f, s.as_str())).collect();
    check_templates(r, &agent, &borrowed);

    // The disclosure is rendered now: only the agent's own fields.
    if let Some(src) = disclosure_src {
        match Template::parse(&src) {
            Err(e) => r.err("disclosure", e.0),
            Ok(t) => {
                let rendered = t.render(|v| match v {
                    Var::AgentName => Some(agent.name.clone()),
                    Var::AgentOrganization => agent.organization.clone(),
                    Var::AgentDescription => agent.description.clone(),
                    _ => None,
                });
                match rendered {
                    Ok(text) => agent.disclosure = Some(text),
                    Err(super::template::Missing(v)) => r.err(
                        "disclosure",
                        format!(
                            "{} has no value here: a disclosure may use {{{{agent.name}}}}, \
                             {{{{agent.organization}}}} (when set) and {{{{agent.description}}}} (when set)",
                            v.placeholder()
                        ),
                    ),
                }
            }
        }
    }

    (r.errors.len() == before).then_some(agent)
}

fn resolve_turn_detection(r: &mut Resolver<'_>, a: &AgentConfig) -> Option<TurnDetection> {
    let c = r.config;
    let Some(td) = &a.turn_detection else {
        return c.turn_detection();
    };
    let kind = td.kind.clone().unwrap_or_else(|| c.turn_detection.clone());
    let interrupt_response = c.interrupt_response;
    let server_only = [
        ("threshold", td.threshold.is_some()),
        ("prefix_padding_ms", td.prefix_padding_ms.is_some()),
        ("silence_duration_ms", td.silence_duration_ms.is_some()),
    ];
    match kind.as_str() {
        "server_vad" => {
            if td.eagerness.is_some() {
                r.err(
                    "turn_detection.eagerness",
                    "only for type = \"semantic_vad\"",
                );
            }
            let threshold = td.threshold.unwrap_or(c.vad_threshold);
            if !(0.0..=1.0).contains(&threshold) {
                r.err(
                    "turn_detection.threshold",
                    format!("{threshold} is not between 0 and 1"),
                );
            }
            let prefix = td.prefix_padding_ms.unwrap_or(c.vad_prefix_padding_ms);
            if prefix > 10_000 {
                r.err(
                    "turn_detection.prefix_padding_ms",
                    format!("{prefix} is more than 10000"),
                );
            }
            let silence = td.silence_duration_ms.unwrap_or(c.vad_silence_duration_ms);
            if silence > 10_000 {
                r.err(
                    "turn_detection.silence_duration_ms",
                    format!("{silence} is more than 10000"),
                );
            }
            Some(TurnDetection::ServerVad {
                threshold,
                prefix_padding_ms: prefix,
                silence_duration_ms: silence,
                idle_timeout_ms: None,
                create_response: true,
                interrupt_response,
            })
        }
        "semantic_vad" | "none" => {
            for (f, set) in server_only {
                if set {
                    r.err(
                        format!("turn_detection.{f}"),
                        "only for type = \"server_vad\"",
                    );
                }
            }
            if kind == "none" {
                if td.eagerness.is_some() {
                    r.err(
                        "turn_detection.eagerness",
                        "only for type = \"semantic_vad\"",
                    );
                }
                return None;
            }
            let eagerness = td
                .eagerness
                .clone()
                .unwrap_or_else(|| c.vad_eagerness.clone());
            if !matches!(eagerness.as_str(), "low" | "medium" | "high" | "auto") {
                r.err(
                    "turn_detection.eagerness",
                    format!("{eagerness:?} is not low, medium, high or auto"),
                );
            }
            Some(TurnDetection::SemanticVad {
                eagerness,
                create_response: true,
                interrupt_response,
            })
        }
        other => {
            r.err(
                "turn_detection.type",
                format!("{other:?} is not server_vad, semantic_vad or none"),
            );
            None
        }
    }
}

fn resolve_transcription(r: &mut Resolver<'_>, a: &AgentConfig) -> Option<Transcription> {
    let c = r.config;
    let Some(t) = &a.transcription else {
        return c.transcription();
    };
    let model = t
        .model
        .clone()
        .unwrap_or_else(|| c.transcription_model.clone());
    let language = t
        .language
        .clone()
        .or_else(|| c.transcription_language.clone());
    if let Some(l) = &t.language
        && !((2..=3).contains(&l.len()) && l.bytes().all(|b| b.is_ascii_lowercase()))
    {
        r.err(
            "transcription.language",
            format!("{l:?} is not an ISO-639-1 language code such as \"en\""),
        );
    }
    if model.trim().is_empty() || model.chars().any(char::is_whitespace) {
        r.err(
            "transcription.model",
            format!("{model:?} is not a model name (or \"none\")"),
        );
    }
    (model != "none").then_some(Transcription { model, language })
}

fn resolve_knowledge(r: &mut Resolver<'_>, a: &AgentConfig) -> String {
    let mut total: u64 = 0;
    let mut parts: Vec<String> = Vec::new();
    let limit_msg = |what: String, total: u64| {
        format!(
            "{what}; knowledge is limited to {} KiB per profile ({:.1} KiB before it)",
            MAX_KNOWLEDGE_BYTES / 1024,
            total as f64 / 1024.0
        )
    };
    for (i, k) in a.knowledge.iter().enumerate() {
        let field = format!("knowledge[{i}]");
        let text = match (&k.text, &k.file) {
            (Some(t), None) => {
                let len = t.len() as u64;
                if total + len > MAX_KNOWLEDGE_BYTES {
                    r.err(
                        format!("{field}.text"),
                        limit_msg(format!("the text is {len} bytes"), total),
                    );
                    return String::new();
                }
                t.clone()
            }
            (None, Some(f)) => {
                let path = r.base_dir.join(f);
                r.watched.push(path.clone());
                let shown = path.display().to_string();
                let meta = match std::fs::metadata(&path) {
                    Ok(m) if m.is_file() => m,
                    Ok(_) => {
                        r.err(format!("{field}.file"), format!("{shown} is not a file"));
                        continue;
                    }
                    Err(e) => {
                        r.err(format!("{field}.file"), format!("cannot read {shown}: {e}"));
                        continue;
                    }
                };
                if total + meta.len() > MAX_KNOWLEDGE_BYTES {
                    r.err(
                        format!("{field}.file"),
                        limit_msg(
                            format!("{shown} is {:.1} KiB", meta.len() as f64 / 1024.0),
                            total,
                        ),
                    );
                    return String::new();
                }
                // Read at most the limit, whatever the file grew to since.
                use std::io::Read;
                let mut buf = Vec::new();
                let read = std::fs::File::open(&path).and_then(|f| {
                    f.take(MAX_KNOWLEDGE_BYTES - total + 1)
                        .read_to_end(&mut buf)
                });
                if let Err(e) = read {
                    r.err(format!("{field}.file"), format!("cannot read {shown}: {e}"));
                    continue;
                }
                if total + buf.len() as u64 > MAX_KNOWLEDGE_BYTES {
                    r.err(
                        format!("{field}.file"),
                        limit_msg(format!("{shown} is too large"), total),
                    );
                    return String::new();
                }
                match String::from_utf8(buf) {
                    Ok(s) => s,
                    Err(_) => {
                        r.err(
                            format!("{field}.file"),
                            format!("{shown} is not UTF-8 text"),
                        );
                        continue;
                    }
                }
            }
            (Some(_), Some(_)) => {
                r.err(field, "give `text` or `file`, not both");
                continue;
            }
            (None, None) => {
                r.err(field, "give `text` or `file`");
                continue;
            }
        };
        total += text.len() as u64;
        let text = text.trim();
        if !text.is_empty() {
            parts.push(text.to_owned());
        }
    }
    parts.join("\n\n")
}

fn resolve_http_tools(r: &mut Resolver<'_>, a: &AgentConfig) -> Vec<HttpTool> {
    let mut out: Vec<HttpTool> = Vec::new();
    for (i, t) in a.http_tools.iter().enumerate() {
        let f = |s: &str| format!("http_tools[{i}].{s}");
        let name = t.name.trim().to_owned();
        if !is_tool_name(&name) {
            r.err(
                f("name"),
                format!("{name:?} is not a valid tool name (1 to 64 of a-z A-Z 0-9 _ -)"),
            );
        } else if BUILTIN_TOOLS.contains(&name.as_str()) {
            r.err(
                f("name"),
                format!("{name:?} is the name of a built-in tool; choose another"),
            );
        } else if out.iter().any(|o| o.name == name)
            || a.http_tools[..i].iter().any(|o| o.name.trim() == name)
        {
            r.err(f("name"), format!("{name:?} is used by another tool"));
        }
        let url = match substitute_env(t.url.trim(), r.env) {
            Ok(url) => {
                match url::Url::parse(&url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {}
                    Ok(_) => r.err(
                        f("url"),
                        format!("{url:?} must be an http(s) URL with a host"),
                    ),
                    Err(e) => r.err(f("url"), format!("{url:?} is not a URL: {e}")),
                }
                url
            }
            Err(e) => {
                r.err(f("url"), e);
                String::new()
            }
        };
        let method = match &t.method {
            None => HttpMethod::Post,
            Some(m) => HttpMethod::parse(m).unwrap_or_else(|| {
                r.err(
                    f("method"),
                    format!("{m:?} is not GET, POST, PUT, PATCH or DELETE"),
                );
                HttpMethod::Post
            }),
        };
        let mut headers = Vec::new();
        for (k, v) in &t.headers {
            let field = f(&format!("headers.{k}"));
            if axum::http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                r.err(field, format!("{k:?} is not a valid header name"));
                continue;
            }
            match substitute_env(v, r.env) {
                Ok(value) => {
                    if axum::http::HeaderValue::from_str(&value).is_err() {
                        r.err(field, "the value is not a valid header value");
                    } else {
                        headers.push((k.clone(), value));
                    }
                }
                Err(e) => r.err(field, e),
            }
        }
        let parameters = match &t.parameters {
            None => serde_json::json!({"type": "object", "properties": {}}),
            Some(p) => {
                match p {
                    serde_json::Value::Object(m) if m.get("type") == Some(&"object".into()) => {
                        if let Some(props) = m.get("properties")
                            && !props.is_object()
                        {
                            r.err(f("parameters.properties"), "must be an object");
                        }
                        if let Some(req) = m.get("required")
                            && !req
                                .as_array()
                                .is_some_and(|a| a.iter().all(serde_json::Value::is_string))
                        {
                            r.err(f("parameters.required"), "must be a list of names");
                        }
                    }
                    _ => r.err(
                        f("parameters"),
                        "must be a JSON schema object: {\"type\": \"object\", \"properties\": {…}}",
                    ),
                }
                p.clone()
            }
        };
        let timeout_ms = t.timeout_ms.unwrap_or(DEFAULT_TOOL_TIMEOUT_MS);
        if !(1..=MAX_TOOL_TIMEOUT_MS).contains(&timeout_ms) {
            r.err(
                f("timeout_ms"),
                format!("{timeout_ms} is out of range (1 to {MAX_TOOL_TIMEOUT_MS})"),
            );
        }
        if t.description.trim().is_empty() {
            r.err(
                f("description"),
                "required: the model decides when to call the tool from it",
            );
        }
        out.push(HttpTool {
            name,
            description: t.description.trim().to_owned(),
            url,
            method,
            headers,
            parameters,
            timeout_ms,
        });
    }
    out
}
