//! Tools the agent may call during a call: the built-in call tools (end the call, transfer
//! to a person, record a survey answer, opt out, report a voicemail) and the customer's HTTP
//! tools declared in the agent profile.
//!
//! The model asks for a tool with a `function_call` output item; [`decide`] turns it into an
//! [`Action`] for the call session (which owns the timing: a call ends or is transferred only
//! after the agent's words have played). HTTP tools run off the session's task
//! ([`run_http`]). Nothing here panics on the model's input: unknown tools, arguments that are
//! not JSON, timeouts and non-2xx answers all become an error output the model can read.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use voxbridge_realtime::calls::FunctionTool;

/// Built-in tool names.
pub const END_CALL: &str = "end_call";
pub const TRANSFER_CALL: &str = "transfer_call";
pub const RECORD_SURVEY_RESPONSE: &str = "record_survey_response";
pub const OPT_OUT: &str = "opt_out";
pub const VOICEMAIL_DETECTED: &str = "voicemail_detected";
pub const BUILTIN_TOOLS: [&str; 5] = [
    END_CALL,
    TRANSFER_CALL,
    RECORD_SURVEY_RESPONSE,
    OPT_OUT,
    VOICEMAIL_DETECTED,
];

/// Largest HTTP tool response passed back to the model.
pub const MAX_HTTP_OUTPUT: usize = 16 * 1024;

/// A customer HTTP tool, resolved from the agent profile.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpTool {
    pub name: String,
    pub description: String,
    pub url: String,
    /// GET, POST, PUT, PATCH, DELETE.
    pub method: String,
    /// Headers with `${ENV}` already substituted.
    pub headers: Vec<(String, String)>,
    /// JSON schema of the arguments (an object schema).
    pub parameters: Value,
    pub timeout: Duration,
}

/// Where `transfer_call` sends the caller.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferTarget {
    /// E.164 number or `sip:` URI.
    pub to: String,
    /// Warm: the caller waits in a conference while the person is dialed in.
    pub warm: bool,
}

/// What the agent does when it reaches a voicemail.
#[derive(Debug, Clone, PartialEq)]
pub enum VoicemailPlan {
    /// Leave this message after the beep, then hang up.
    LeaveMessage(String),
    HangUp,
}

/// The tools of one call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallTools {
    /// Enabled built-in tools.
    pub builtins: Vec<String>,
    pub http: Vec<HttpTool>,
    pub transfer: Option<TransferTarget>,
    pub voicemail: Option<VoicemailPlan>,
}

impl CallTools {
    pub fn is_empty(&self) -> bool {
        self.builtins.is_empty() && self.http.is_empty()
    }

    /// The function tools declared in the session.
    pub fn function_tools(&self) -> Vec<FunctionTool> {
        let mut out: Vec<FunctionTool> = self
            .builtins
            .iter()
            .filter_map(|name| builtin_tool(name, self.transfer.is_some()))
            .collect();
        out.extend(self.http.iter().map(|t| {
            FunctionTool::new(t.name.clone(), t.description.clone(), t.parameters.clone())
        }));
        out
    }

    fn http_tool(&self, name: &str) -> Option<&HttpTool> {
        self.http.iter().find(|t| t.name == name)
    }
}

fn builtin_tool(name: &str, can_transfer: bool) -> Option<FunctionTool> {
    let (description, parameters) = match name {
        END_CALL => (
            "End the call. Say your goodbye first; the call ends after your words have played.",
            json!({"type": "object", "properties": {
                "reason": {"type": "string", "description": "why the call ends, e.g. task done, wrong person, caller asked"}
            }, "required": ["reason"], "additionalProperties": false}),
        ),
        TRANSFER_CALL if can_transfer => (
            "Transfer the caller to a human colleague. Tell the caller you are transferring them first.",
            json!({"type": "object", "properties": {
                "reason": {"type": "string", "description": "what the caller needs, for the colleague"}
            }, "required": ["reason"], "additionalProperties": false}),
        ),
        RECORD_SURVEY_RESPONSE => (
            "Record the caller's answer to one survey question, as soon as they have answered it.",
            json!({"type": "object", "properties": {
                "question": {"type": "string"},
                "answer": {"type": "string"}
            }, "required": ["question", "answer"], "additionalProperties": false}),
        ),
        OPT_OUT => (
            "The caller does not want to be called again: put the number on the do-not-call list. \
             Then confirm and say goodbye.",
            json!({"type": "object", "properties": {
                "reason": {"type": "string"}
            }, "additionalProperties": false}),
        ),
        VOICEMAIL_DETECTED => (
            "You reached a voicemail or answering machine, not a person.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
        _ => return None,
    };
    Some(FunctionTool::new(name, description, parameters))
}

/// The tools of an agent on a call doing `task` (the voicemail message is a template).
pub fn for_agent(agent: &crate::agents::Agent, task: Option<&crate::agents::Task>) -> CallTools {
    use crate::agents::VoicemailAction;
    let voicemail = agent.voicemail.as_ref().map(|v| match v.action {
        VoicemailAction::HangUp => VoicemailPlan::HangUp,
        VoicemailAction::LeaveMessage => match agent.voicemail_message_for(task) {
            Ok(Some(m)) => VoicemailPlan::LeaveMessage(m),
            // A message that does not render for this task: hang up rather than say it wrong.
            _ => VoicemailPlan::HangUp,
        },
    });
    CallTools {
        builtins: agent.tools.clone(),
        http: agent
            .http_tools
            .iter()
            .map(|t| HttpTool {
                name: t.name.clone(),
                description: t.description.clone(),
                url: t.url.clone(),
                method: t.method.as_str().to_owned(),
                headers: t.headers.clone(),
                parameters: t.parameters.clone(),
                timeout: Duration::from_millis(t.timeout_ms),
            })
            .collect(),
        transfer: agent.transfer.as_ref().map(|t| TransferTarget {
            to: t.to.clone(),
            warm: t.warm,
        }),
        voicemail,
    }
}

/// One `function_call` item from the model.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionCall {
    pub call_id: String,
    pub name: String,
    /// JSON text, as the model sent it.
    pub arguments: String,
}

/// What the session does with a tool call.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Give the model this output and let it go on (`response.create`).
    Reply { output: Value, ok: bool },
    /// Give the model this output; when the agent's words have played, end the call. With
    /// `goodbye`, the model first speaks once more (e.g. confirms an opt-out).
    End {
        output: Value,
        reason: String,
        goodbye: bool,
    },
    /// Give the model this output; when its words have played, transfer the call.
    Transfer {
        output: Value,
        target: TransferTarget,
        reason: String,
    },
    /// The agent reached a voicemail.
    Voicemail { output: Value },
    /// Record a survey answer, then reply.
    SurveyAnswer { question: String, answer: String },
    /// Put the callee on the do-not-call list, then confirm and end.
    OptOut { reason: Option<String> },
    /// Run this HTTP tool (off the session task), then reply with its result.
    Http { tool: HttpTool, arguments: Value },
}

fn error(message: impl Into<String>) -> Action {
    Action::Reply {
        output: json!({"error": message.into()}),
        ok: false,
    }
}

fn str_arg(args: &Value, key: &str) -> Option<String> {
    args.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Decides what a tool call means. Never fails: problems become an error output.
pub fn decide(tools: &CallTools, call: &FunctionCall) -> Action {
    let args: Value = if call.arguments.trim().is_empty() {
        json!({})
    } else {
        match serde_json::from_str(&call.arguments) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return error("arguments must be a JSON object"),
            Err(e) => return error(format!("arguments are not valid JSON: {e}")),
        }
    };
    let enabled = tools.builtins.contains(&call.name);
    match call.name.as_str() {
        END_CALL if enabled => Action::End {
            output: json!({"ok": true, "note": "the call ends after your last words"}),
            reason: str_arg(&args, "reason").unwrap_or_else(|| "agent ended the call".into()),
            goodbye: false,
        },
        TRANSFER_CALL if enabled => match &tools.transfer {
            Some(target) => Action::Transfer {
                output: json!({"ok": true, "note": "transferring after your last words"}),
                target: target.clone(),
                reason: str_arg(&args, "reason").unwrap_or_default(),
            },
            None => error("no transfer destination is configured for this agent"),
        },
        RECORD_SURVEY_RESPONSE if enabled => {
            match (str_arg(&args, "question"), str_arg(&args, "answer")) {
                (Some(question), Some(answer)) => Action::SurveyAnswer { question, answer },
                _ => error("record_survey_response needs a non-empty question and answer"),
            }
        }
        OPT_OUT if enabled => Action::OptOut {
            reason: str_arg(&args, "reason"),
        },
        VOICEMAIL_DETECTED if enabled => Action::Voicemail {
            output: json!({"ok": true}),
        },
        name => match tools.http_tool(name) {
            Some(tool) => Action::Http {
                tool: tool.clone(),
                arguments: args,
            },
            None => error(format!("unknown tool {name:?}")),
        },
    }
}

/// Result of an HTTP tool.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResult {
    pub output: Value,
    pub ok: bool,
    pub duration: Duration,
}

/// Calls a customer HTTP tool: GET and DELETE send the arguments as query parameters, the
/// other methods as a JSON body. The response body goes back to the model (JSON when it is
/// JSON, else text; cut to [`MAX_HTTP_OUTPUT`]); timeouts and non-2xx answers become errors.
pub async fn run_http(client: &reqwest::Client, tool: &HttpTool, args: &Value) -> HttpResult {
    let started = Instant::now();
    let result = call_http(client, tool, args).await;
    let (output, ok) = match result {
        Ok(v) => (v, true),
        Err(v) => (v, false),
    };
    HttpResult {
        output,
        ok,
        duration: started.elapsed(),
    }
}

async fn call_http(
    client: &reqwest::Client,
    tool: &HttpTool,
    args: &Value,
) -> Result<Value, Value> {
    let method = reqwest::Method::from_bytes(tool.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| json!({"error": format!("bad method {}", tool.method)}))?;
    let mut url = url::Url::parse(&tool.url)
        .map_err(|e| json!({"error": format!("{}: bad URL: {e}", tool.name)}))?;
    let query = method == reqwest::Method::GET || method == reqwest::Method::DELETE;
    if query {
        let mut pairs = url.query_pairs_mut();
        for (k, v) in args.as_object().into_iter().flatten() {
            match v {
                Value::String(s) => pairs.append_pair(k, s),
                other => pairs.append_pair(k, &other.to_string()),
            };
        }
    }
    let mut rb = client.request(method, url).timeout(tool.timeout);
    for (k, v) in &tool.headers {
        rb = rb.header(k, v);
    }
    if !query {
        rb = rb.json(args);
    }
    let resp = rb.send().await.map_err(|e| {
        if e.is_timeout() {
            json!({"error": format!("{} did not answer within {} ms", tool.name, tool.timeout.as_millis())})
        } else {
            json!({"error": format!("{} could not be reached: {}", tool.name, e.without_url())})
        }
    })?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| {
        json!({"error": format!("{}: reading the answer failed: {}", tool.name, e.without_url())})
    })?;
    let body = body_value(&bytes);
    if !status.is_success() {
        return Err(
            json!({"error": format!("{} answered HTTP {}", tool.name, status.as_u16()), "body": body}),
        );
    }
    Ok(body)
}

fn body_value(bytes: &[u8]) -> Value {
    if bytes.len() <= MAX_HTTP_OUTPUT
        && let Ok(v) = serde_json::from_slice::<Value>(bytes)
    {
        return v;
    }
    let text = String::from_utf8_lossy(bytes);
    let mut end = text.len().min(MAX_HTTP_OUTPUT);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Value::String(text[..end].to_owned())
}

/// The output item text the model gets (function outputs are strings).
pub fn output_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools() -> CallTools {
        CallTools {
            builtins: BUILTIN_TOOLS.iter().map(|s| s.to_string()).collect(),
            http: vec![HttpTool {
                name: "lookup_order".into(),
                description: "Look up an order".into(),
                url: "http://127.0.0.1:1/orders".into(),
                method: "GET".into(),
                headers: vec![],
                parameters: json!({"type": "object", "properties": {"id": {"type": "string"}}}),
                timeout: Duration::from_millis(500),
            }],
            transfer: Some(TransferTarget {
                to: "+14155550100".into(),
                warm: false,
            }),
            voicemail: None,
        }
    }

    fn call(name: &str, args: &str) -> FunctionCall {
        FunctionCall {
            call_id: "call_1".into(),
            name: name.into(),
            arguments: args.into(),
        }
    }

    #[test]
    fn declared_tools() {
        let t = tools();
        let names: Vec<String> = t.function_tools().into_iter().map(|f| f.name).collect();
        assert_eq!(
            names,
            [
                "end_call",
                "transfer_call",
                "record_survey_response",
                "opt_out",
                "voicemail_detected",
                "lookup_order"
            ]
        );
        let no_transfer = CallTools {
            transfer: None,
            ..tools()
        };
        assert!(
            !no_transfer
                .function_tools()
                .iter()
                .any(|f| f.name == "transfer_call")
        );
    }

    #[test]
    fn decisions_and_errors() {
        let t = tools();
        assert!(matches!(
            decide(&t, &call("end_call", r#"{"reason":"done"}"#)),
            Action::End { reason, goodbye: false, .. } if reason == "done"
        ));
        assert!(matches!(
            decide(&t, &call("transfer_call", r#"{"reason":"billing"}"#)),
            Action::Transfer { target, .. } if target.to == "+14155550100"
        ));
        assert_eq!(
            decide(
                &t,
                &call(
                    "record_survey_response",
                    r#"{"question":"Q1","answer":"yes"}"#
                )
            ),
            Action::SurveyAnswer {
                question: "Q1".into(),
                answer: "yes".into()
            }
        );
        for (name, args, needle) in [
            (
                "record_survey_response",
                r#"{"question":"Q1"}"#,
                "non-empty",
            ),
            ("end_call", "{not json", "not valid JSON"),
            ("end_call", "[1]", "JSON object"),
            ("launch_rocket", "{}", "unknown tool"),
        ] {
            let Action::Reply { output, ok } = decide(&t, &call(name, args)) else {
                panic!("{name}: expected an error reply");
            };
            assert!(!ok);
            assert!(
                output["error"].as_str().unwrap_or("").contains(needle),
                "{output}"
            );
        }
        // a built-in the agent does not enable is unknown
        let only_end = CallTools {
            builtins: vec!["end_call".into()],
            ..CallTools::default()
        };
        assert!(matches!(
            decide(&only_end, &call("opt_out", "{}")),
            Action::Reply { ok: false, .. }
        ));
        assert!(matches!(
            decide(&t, &call("lookup_order", r#"{"id":"7"}"#)),
            Action::Http { .. }
        ));
    }

    #[test]
    fn long_or_binary_bodies_are_cut() {
        let big = vec![b'a'; MAX_HTTP_OUTPUT * 2];
        assert_eq!(
            body_value(&big).as_str().map(str::len),
            Some(MAX_HTTP_OUTPUT)
        );
        assert_eq!(body_value(br#"{"a":1}"#), json!({"a": 1}));
        assert_eq!(body_value(b"plain"), json!("plain"));
    }
}
