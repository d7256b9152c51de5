//! Agents: profiles (files in `AGENTS_DIR` and `[[agents]]` tables), the
//! tasks outbound calls carry, and the instructions a task renders to.
//!
//! - [`Agents`]: one consistent set of resolved agents (`default` always exists);
//! - [`AgentRegistry`]: the live set, re-read when the files change and on SIGHUP;
//! - [`render_instructions`] and [`call_texts`]: what a call says to the model;
//! - [`template`]: the `{{…}}` syntax; [`builtin`]: the task types' templates.
//!
//! A profile file (`agents/reminder.toml`, `agents/survey.yaml`) has the
//! fields of [`crate::config::AgentConfig`]; see `agents/README.md` for the format. Every
//! error names the file and the field:
//! `agents/reminder.toml: voice: "robot" is not a Realtime voice (one of …)`.

pub mod builtin;
mod profile;
mod registry;
pub mod template;

pub use profile::{LoadError, ProfileError};
pub use registry::AgentRegistry;

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use template::{Template, Var};
use voxbridge_realtime::session::{Transcription, TurnDetection};

/// What an outbound call is for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// `appointment_reminder`, `survey`, `notification`, `custom`, …
    #[serde(rename = "type", default = "custom")]
    pub kind: String,
    /// What the agent must do on this call.
    #[serde(default)]
    pub prompt: String,
    /// Facts for the agent (e.g. `{"name": "Ana"}`).
    #[serde(default)]
    pub context: BTreeMap<String, String>,
}

fn custom() -> String {
    "custom".into()
}

/// The kinds of task with a built-in instructions template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    AppointmentReminder,
    Survey,
    Notification,
    TransitBooking,
    Custom,
}

impl TaskType {
    pub const ALL: [TaskType; 5] = [
        TaskType::AppointmentReminder,
        TaskType::Survey,
        TaskType::Notification,
        TaskType::TransitBooking,
        TaskType::Custom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::AppointmentReminder => "appointment_reminder",
            TaskType::Survey => "survey",
            TaskType::Notification => "notification",
            TaskType::TransitBooking => "transit_booking",
            TaskType::Custom => "custom",
        }
    }

    pub fn parse(s: &str) -> Option<TaskType> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The built-in tools a profile can enable.
pub const BUILTIN_TOOLS: &[&str] = &[
    "end_call",
    "transfer_call",
    "record_survey_response",
    "opt_out",
    "voicemail_detected",
];

/// An HTTP method an HTTP tool may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// Case-insensitive.
    pub fn parse(s: &str) -> Option<HttpMethod> {
        [
            HttpMethod::Get,
            HttpMethod::Post,
            HttpMethod::Put,
            HttpMethod::Patch,
            HttpMethod::Delete,
        ]
        .into_iter()
        .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// An HTTP endpoint the agent can call as a function tool. Headers are
/// resolved (`${ENV}` substituted) and never shown by `Debug`.
#[derive(Clone, PartialEq)]
pub struct HttpTool {
    pub name: String,
    pub description: String,
    pub url: String,
    pub method: HttpMethod,
    pub headers: Vec<(String, String)>,
    /// JSON schema of the arguments (`{"type": "object", …}`).
    pub parameters: serde_json::Value,
    pub timeout_ms: u64,
}

impl std::fmt::Debug for HttpTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("HttpTool")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("method", &self.method)
            .field("headers", &header_names)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

/// Where `transfer_call` sends the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// E.164 number or `sip:` / `sips:` URI.
    pub to: String,
    /// Through a Twilio conference, introducing the call to the human first.
    pub warm: bool,
    /// Warm transfer: what the human hears first (a template; see
    /// [`Agent::conference_intro_for`]).
    pub conference_intro: Option<String>,
}

/// What to do when an answering machine picks up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoicemailAction {
    LeaveMessage,
    HangUp,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Voicemail {
    pub action: VoicemailAction,
    /// The message for `LeaveMessage` (a template; see
    /// [`Agent::voicemail_message_for`]).
    pub message: Option<String>,
}

/// A resolved, validated agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    /// Where it was defined: `agents/reminder.toml`, `[[agents]] "x"`, or
    /// `settings` for the implicit `default` agent.
    pub source: String,
    pub description: Option<String>,
    pub task_type: TaskType,
    pub organization: Option<String>,
    /// The instructions template (validated; see [`render_instructions`]).
    pub instructions: String,
    /// What the first response does, a template (see [`Agent::greeting_for`]).
    pub greeting: String,
    /// The AI-disclosure line, rendered; spoken first (see [`call_texts`]).
    pub disclosure: Option<String>,
    pub voice: String,
    pub model: String,
    /// Effective turn detection (the profile's, else the settings'); `None`: manual turns.
    pub turn_detection: Option<TurnDetection>,
    /// Effective caller transcription; `None`: off.
    pub transcription: Option<Transcription>,
    /// All knowledge snippets, joined by blank lines ("" when none).
    pub knowledge: String,
    /// Enabled built-in tools (names from [`BUILTIN_TOOLS`]).
    pub tools: Vec<String>,
    pub http_tools: Vec<HttpTool>,
    pub transfer: Option<Transfer>,
    pub voicemail: Option<Voicemail>,
    pub max_call_duration_s: u32,
    pub silence_timeout_s: Option<u32>,
    /// Inbound numbers (E.164) this agent answers.
    pub numbers: Vec<String>,
}

impl Agent {
    /// Whether the built-in tool `name` is enabled.
    pub fn has_tool(&self, name: &str) -> bool {
        self.tools.iter().any(|t| t == name)
    }

    /// The greeting (instructions for the first response) for `task`.
    pub fn greeting_for(&self, task: Option<&Task>) -> Result<String, RenderError> {
        render_field(self, "greeting", &self.greeting, task)
    }

    /// The voicemail message for `task`, when the agent leaves one.
    pub fn voicemail_message_for(
        &self,
        task: Option<&Task>,
    ) -> Result<Option<String>, RenderError> {
        match self.voicemail.as_ref().and_then(|v| v.message.as_deref()) {
            Some(m) => render_field(self, "voicemail.message", m, task).map(Some),
            None => Ok(None),
        }
    }

    /// What the human hears before a warm transfer joins them, for `task`.
    pub fn conference_intro_for(&self, task: Option<&Task>) -> Result<Option<String>, RenderError> {
        match self
            .transfer
            .as_ref()
            .and_then(|t| t.conference_intro.as_deref())
        {
            Some(m) => render_field(self, "transfer.conference_intro", m, task).map(Some),
            None => Ok(None),
        }
    }
}

/// A template could not be rendered for a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error(
        "agent {agent:?}: {field} uses {{{{context.{key}}}}} but the task's context has no {key:?} \
         (give it in task.context, or write {{{{context.{key} | default: \"…\"}}}} in the profile)"
    )]
    MissingContext {
        agent: String,
        field: &'static str,
        key: String,
    },
    #[error("agent {agent:?}: {field}: {message}")]
    Template {
        agent: String,
        field: &'static str,
        message: String,
    },
}

/// The instructions for `agent` doing `task` (if any): its template
/// rendered. When the template mentions neither `{{task.prompt}}` nor the
/// context, a task's prompt and context are appended under `# This call`;
/// when it does not place `{{knowledge}}`, knowledge is appended under
/// `# Knowledge`.
pub fn render_instructions(agent: &Agent, task: Option<&Task>) -> Result<String, RenderError> {
    let template = parse_field(agent, "instructions", &agent.instructions)?;
    let mut s = render_parsed(agent, "instructions", &template, task)?;
    let trim_end = |s: &mut String| s.truncate(s.trim_end().len());
    let mentions_task =
        template.uses(|v| matches!(v, Var::TaskPrompt | Var::Context(_) | Var::AllContext));
    if let Some(task) = task
        && !mentions_task
        && (!task.prompt.is_empty() || !task.context.is_empty())
    {
        trim_end(&mut s);
        s.push_str("\n\n# This call\n");
        s.push_str(&format!("Task type: {}\n", task.kind));
        if !task.prompt.is_empty() {
            s.push_str(&format!("Task: {}\n", task.prompt));
        }
        if !task.context.is_empty() {
            s.push_str("Context:\n");
            s.push_str(&context_lines(&task.context));
        }
    }
    if !agent.knowledge.is_empty() && !template.uses(|v| *v == Var::Knowledge) {
        trim_end(&mut s);
        s.push_str(
            "\n\n# Knowledge\nUse these facts when they help; do not read them out unless asked.\n",
        );
        s.push_str(&agent.knowledge);
    }
    Ok(s)
}

/// The texts a call starts with.
#[derive(Debug, Clone, PartialEq)]
pub struct CallTexts {
    /// The session instructions.
    pub instructions: String,
    /// Instructions for the agent's first response (`None`: the caller
    /// speaks first). Begins with the disclosure, word for word.
    pub greeting: Option<String>,
}

/// Instructions and greeting for a call. The disclosure goes first: into
/// the greeting when the agent speaks first, else into the instructions
/// (the first reply begins with it).
pub fn call_texts(
    agent: &Agent,
    task: Option<&Task>,
    agent_speaks_first: bool,
) -> Result<CallTexts, RenderError> {
    let mut instructions = render_instructions(agent, task)?;
    let greeting = agent.greeting_for(task)?;
    let greeting = match (&agent.disclosure, agent_speaks_first) {
        (Some(d), true) => Some(format!(
            "Begin by saying, word for word: \"{d}\" Then continue: {greeting}"
        )),
        (None, true) => Some(greeting),
        (Some(d), false) => {
            instructions.push_str(&format!(
                "\n\nYour first reply on this call must begin, word for word, with: \"{d}\""
            ));
            None
        }
        (None, false) => None,
    };
    Ok(CallTexts {
        instructions,
        greeting,
    })
}

/// Render every per-call template of `agent` for `task` (instructions,
/// greeting, voicemail message, conference intro): what to check before
/// placing a call.
pub fn check_task(agent: &Agent, task: Option<&Task>) -> Result<(), RenderError> {
    render_instructions(agent, task)?;
    agent.greeting_for(task)?;
    agent.voicemail_message_for(task)?;
    agent.conference_intro_for(task)?;
    Ok(())
}

/// A task for trying `agent` out: its task type, a sample prompt, and a
/// sample value for every context key its templates use.
pub fn sample_task(agent: &Agent) -> Task {
    let mut context = BTreeMap::new();
    for src in per_call_templates(agent) {
        if let Ok(t) = Template::parse(src) {
            for (v, _) in t.vars() {
                if let Var::Context(k) = v {
                    context.insert(k.clone(), format!("<{k}>"));
                }
            }
        }
    }
    Task {
        kind: agent.task_type.as_str().into(),
        prompt: "<the task of this call>".into(),
        context,
    }
}

/// The context keys `agent`'s templates need (without a default).
pub fn required_context(agent: &Agent) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for src in per_call_templates(agent) {
        if let Ok(t) = Template::parse(src) {
            for (v, has_default) in t.vars() {
                if let (Var::Context(k), false) = (v, has_default) {
                    keys.insert(k.clone());
                }
            }
        }
    }
    keys
}

fn per_call_templates(agent: &Agent) -> impl Iterator<Item = &str> {
    [
        Some(agent.instructions.as_str()),
        Some(agent.greeting.as_str()),
    ]
    .into_iter()
    .chain([
        agent.voicemail.as_ref().and_then(|v| v.message.as_deref()),
        agent
            .transfer
            .as_ref()
            .and_then(|t| t.conference_intro.as_deref()),
    ])
    .flatten()
}

fn context_lines(context: &BTreeMap<String, String>) -> String {
    context
        .iter()
        .map(|(k, v)| format!("- {k}: {v}\n"))
        .collect()
}

fn parse_field(agent: &Agent, field: &'static str, src: &str) -> Result<Template, RenderError> {
    Template::parse(src).map_err(|e| RenderError::Template {
        agent: agent.name.clone(),
        field,
        message: e.0,
    })
}

fn render_field(
    agent: &Agent,
    field: &'static str,
    src: &str,
    task: Option<&Task>,
) -> Result<String, RenderError> {
    let t = parse_field(agent, field, src)?;
    render_parsed(agent, field, &t, task)
}

/// The value of one placeholder (`None`: missing).
fn lookup(agent: &Agent, task: Option<&Task>, var: &Var) -> Option<String> {
    match var {
        Var::TaskPrompt => Some(task.map(|t| t.prompt.clone()).unwrap_or_default()),
        Var::TaskType => Some(
            task.map(|t| t.kind.clone())
                .unwrap_or_else(|| agent.task_type.as_str().into()),
        ),
        Var::Context(k) => task.and_then(|t| t.context.get(k).cloned()),
        Var::AllContext => Some(
            task.map(|t| context_lines(&t.context))
                .unwrap_or_default()
                .trim_end()
                .to_owned(),
        ),
        Var::Knowledge => Some(agent.knowledge.clone()),
        Var::AgentName => Some(agent.name.clone()),
        Var::AgentOrganization => agent.organization.clone(),
        Var::AgentDescription => agent.description.clone(),
    }
}

fn render_parsed(
    agent: &Agent,
    field: &'static str,
    t: &Template,
    task: Option<&Task>,
) -> Result<String, RenderError> {
    t.render(|v| lookup(agent, task, v))
        .map_err(|template::Missing(var)| match var {
            Var::Context(key) => RenderError::MissingContext {
                agent: agent.name.clone(),
                field,
                key,
            },
            other => RenderError::Template {
                agent: agent.name.clone(),
                field,
                message: format!("{} has no value", other.placeholder()),
            },
        })
}

/// One consistent set of agents; `default` always exists.
#[derive(Debug, Clone)]
pub struct Agents {
    agents: Vec<Arc<Agent>>,
    /// Knowledge files read, for the reloader.
    watched: Vec<PathBuf>,
}

impl Agents {
    /// The `[[agents]]` of `c` and the implicit `default` (no files). Falls
    /// back to the implicit `default` alone if they do not resolve (which
    /// [`Config`] validation has ruled out).
    pub fn from_config(c: &Config) -> Self {
        let env = |k: &str| std::env::var(k).ok();
        Self::from_config_checked(c, &env).unwrap_or_else(|_| Agents {
            agents: vec![Arc::new(profile::implicit_default(c))],
            watched: Vec::new(),
        })
    }

    /// The `[[agents]]` of `c` and the implicit `default`, validated (no files).
    pub fn from_config_checked(
        c: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, LoadError> {
        profile::load(c, None, env)
    }

    /// Everything: the `[[agents]]` of `c`, the profile files in `dir`
    /// (default `AGENTS_DIR`; a missing directory has none) and the implicit
    /// `default`. All errors are reported, each naming its file and field.
    pub fn load(
        c: &Config,
        dir: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, LoadError> {
        profile::load(c, Some(dir.unwrap_or(&c.agents_dir)), env)
    }

    pub fn get(&self, name: &str) -> Option<Arc<Agent>> {
        self.agents.iter().find(|a| a.name == name).cloned()
    }

    /// The agent answering calls to `number` (inbound), else `default`.
    pub fn for_number(&self, number: &str) -> Arc<Agent> {
        self.agents
            .iter()
            .find(|a| !number.is_empty() && a.numbers.iter().any(|n| n == number))
            .or_else(|| self.agents.iter().find(|a| a.name == "default"))
            .or_else(|| self.agents.first())
            .cloned()
            .unwrap_or_else(|| Arc::new(profile::implicit_default(&Config::default())))
    }

    pub fn names(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.name.as_str()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.iter()
    }

    pub fn len(&self) -> usize {
        self.agents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.agents.is_empty()
    }
}

#[cfg(test)]
mod tests;
