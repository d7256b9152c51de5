//! `{{…}}` templates for agent instructions, greetings and messages.
//!
//! Syntax: `{{ name }}` or `{{ name | default: "text" }}` (single or double
//! quotes; `\"`, `\'`, `\\` and `\n` escapes). The default is used when the
//! value is missing *or empty*. Names:
//!
//! | placeholder | value |
//! | --- | --- |
//! | `task.prompt` | what the call must do (empty without a task) |
//! | `task.type` | the task's type, else the agent's `task_type` |
//! | `context.KEY` | one value of the task's context; missing = render error |
//! | `context` | the whole context as `- key: value` lines |
//! | `knowledge` | the agent's knowledge snippets, joined |
//! | `agent.name`, `agent.organization`, `agent.description` | the profile's |
//!
//! Anything else between `{{` and `}}` is an error when the template is
//! parsed, that is when the profile is loaded. There is no escape for a
//! literal `{{`; write `{{ "{{" }}`-free text or put it in knowledge.
//! Parsing and rendering never panic, whatever the input.

/// A value a template can ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    TaskPrompt,
    TaskType,
    /// One context key.
    Context(String),
    /// The whole context.
    AllContext,
    Knowledge,
    AgentName,
    AgentOrganization,
    AgentDescription,
}

impl Var {
    fn parse(name: &str) -> Option<Var> {
        Some(match name {
            "task.prompt" => Var::TaskPrompt,
            "task.type" => Var::TaskType,
            "context" => Var::AllContext,
            "knowledge" => Var::Knowledge,
            "agent.name" => Var::AgentName,
            "agent.organization" => Var::AgentOrganization,
            "agent.description" => Var::AgentDescription,
            _ => {
                let key = name.strip_prefix("context.")?;
                if key.is_empty() {
                    return None;
                }
                Var::Context(key.to_owned())
            }
        })
    }

    /// How the placeholder is written (`{{context.name}}`).
    pub fn placeholder(&self) -> String {
        let name = match self {
            Var::TaskPrompt => "task.prompt",
            Var::TaskType => "task.type",
            Var::Context(k) => return format!("{{{{context.{k}}}}}"),
            Var::AllContext => "context",
            Var::Knowledge => "knowledge",
            Var::AgentName => "agent.name",
            Var::AgentOrganization => "agent.organization",
            Var::AgentDescription => "agent.description",
        };
        format!("{{{{{name}}}}}")
    }
}

/// The placeholders a template may use, for error messages.
pub const KNOWN: &str = "{{task.prompt}}, {{task.type}}, {{context.KEY}}, {{context}}, \
                         {{knowledge}}, {{agent.name}}, {{agent.organization}}, {{agent.description}}";

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Var { var: Var, default: Option<String> },
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    segments: Vec<Segment>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TemplateError(pub String);

/// A placeholder had no value and no default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing(pub Var);

fn line_of(src: &str, byte: usize) -> usize {
    src.get(..byte).map_or(0, |s| s.matches('\n').count()) + 1
}

impl Template {
    /// Parse `src`; every placeholder must be a known one.
    pub fn parse(src: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = src;
        let mut offset = 0usize;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Text(rest[..open].to_owned()));
            }
            let at = offset + open;
            let line = line_of(src, at);
            let inner = &rest[open + 2..];
            let (var, default, used) = parse_placeholder(inner).map_err(|why| {
                let shown: String = inner.chars().take(40).collect();
                let shown = shown.split("}}").next().unwrap_or_default().trim();
                TemplateError(format!("line {line}: {{{{{shown}}}}}: {why}"))
            })?;
            segments.push(Segment::Var { var, default });
            let consumed = open + 2 + used;
            rest = &rest[consumed..];
            offset += consumed;
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_owned()));
        }
        Ok(Template { segments })
    }

    /// The placeholders used, with whether each has a default.
    pub fn vars(&self) -> impl Iterator<Item = (&Var, bool)> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var { var, default } => Some((var, default.is_some())),
            Segment::Text(_) => None,
        })
    }

    /// Whether the template uses `var` at all.
    pub fn uses(&self, pred: impl Fn(&Var) -> bool) -> bool {
        self.vars().any(|(v, _)| pred(v))
    }

    /// Render with `lookup` (`None`: no such value). A missing value without
    /// a default is an error naming the placeholder.
    pub fn render(
        &self,
        mut lookup: impl FnMut(&Var) -> Option<String>,
    ) -> Result<String, Missing> {
        let mut out = String::new();
        for s in &self.segments {
            match s {
                Segment::Text(t) => out.push_str(t),
                Segment::Var { var, default } => match (lookup(var), default) {
                    (Some(v), Some(d)) if v.is_empty() => out.push_str(d),
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => return Err(Missing(var.clone())),
                },
            }
        }
        Ok(out)
    }
}

/// Parse `name [| default: "x"] }}` at the start of `s`; returns the bytes
/// consumed including the closing `}}`.
fn parse_placeholder(s: &str) -> Result<(Var, Option<String>, usize), String> {
    let bytes = s.as_bytes();
    let mut i = skip_ws(s, 0);
    let name_start = i;
    while i < bytes.len() && !bytes[i].is_ascii_whitespace() && bytes[i] != b'|' && bytes[i] != b'}'
    {
        i += 1;
    }
    let name = &s[name_start..i];
    if name.is_empty() && !s[i..].starts_with("}}") && i >= bytes.len() {
        return Err("unclosed placeholder (no `}}`)".into());
    }
    let var = Var::parse(name).ok_or_else(|| {
        if name.is_empty() {
            format!("empty placeholder; known: {KNOWN}")
        } else {
            format!("unknown placeholder {name:?}; known: {KNOWN}")
        }
    })?;
    i = skip_ws(s, i);
    let mut default = None;
    if i < bytes.len() && bytes[i] == b'|' {
        i = skip_ws(s, i + 1);
        let Some(after) = s[i..].strip_prefix("default") else {
            return Err("expected `| default: \"text\"`".into());
        };
        i = skip_ws(s, s.len() - after.len());
        if i >= bytes.len() || bytes[i] != b':' {
            return Err("expected `:` after `default`".into());
        }
        i = skip_ws(s, i + 1);
        let quote = match bytes.get(i) {
            Some(q @ (b'"' | b'\'')) => *q as char,
            _ => return Err("the default must be a quoted string".into()),
        };
        let mut text = String::new();
        let mut chars = s[i + 1..].char_indices();
        let mut closed = None;
        while let Some((j, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => text.push('\n'),
                    Some((_, c)) => text.push(c),
                    None => break,
                },
                c if c == quote => {
                    closed = Some(i + 1 + j + 1);
                    break;
                }
                c => text.push(c),
            }
        }
        let Some(end) = closed else {
            return Err("unterminated default string".into());
        };
        default = Some(text);
        i = skip_ws(s, end);
    }
    if s[i..].starts_with("}}") {
        Ok((var, default, i + 2))
    } else if i >= bytes.len() {
        Err("unclosed placeholder (no `}}`)".into())
    } else {
        Err("expected `}}`".into())
    }
}

fn skip_ws(s: &str, mut i: usize) -> usize {
    let b = s.as_bytes();
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, ctx: &[(&str, &str)]) -> Result<String, String> {
        let t = Template::parse(t).map_err(|e| e.0)?;
        t.render(|v| match v {
            Var::Context(k) => ctx.iter().find(|(n, _)| n == k).map(|(_, v)| v.to_string()),
            Var::TaskPrompt => Some("P".into()),
            Var::AgentOrganization => None,
            _ => Some(String::new()),
        })
        .map_err(|m| m.0.placeholder())
    }

    #[test]
    fn renders_placeholders_and_defaults() {
        assert_eq!(
            render("Hi {{ context.name }}! {{task.prompt}}", &[("name", "Ana")]),
            Ok("Hi Ana! P".into())
        );
        assert_eq!(
            render(r#"Hi {{context.name | default: "there"}}."#, &[]),
            Ok("Hi there.".into())
        );
        assert_eq!(
            render(r#"{{context.x|default:'a}}"b\'c'}}"#, &[("x", "")]),
            Ok("a}}\"b'c".into())
        );
        assert_eq!(
            render("for {{agent.organization}}", &[]),
            Err("{{agent.organization}}".into())
        );
        assert_eq!(
            render("{{context.time}}", &[]),
            Err("{{context.time}}".into())
        );
        assert_eq!(render("a { b } }} c", &[]), Ok("a { b } }} c".into()));
    }

    #[test]
    fn bad_templates_are_errors_with_a_line() {
        for (src, want) in [
            ("x\n{{foo}}", "line 2: {{foo}}: unknown placeholder \"foo\""),
            ("{{}}", "empty placeholder"),
            ("{{task.prompt", "unclosed"),
            ("{{", "unclosed"),
            ("{{context.}}", "unknown placeholder \"context.\""),
            ("{{task.prompt | upper}}", "expected `| default"),
            ("{{task.prompt | default: x}}", "quoted string"),
            ("{{task.prompt | default: \"x}}", "unterminated"),
            ("{{task.prompt extra}}", "expected `}}`"),
        ] {
            let err = Template::parse(src).expect_err(src).0;
            assert!(err.contains(want), "{src:?}: {err}");
        }
    }

    #[test]
    fn never_panics_on_odd_input() {
        let samples = [
            "{{é",
            "{{ é }}",
            "{{context.é}}",
            "}}{{",
            "{{{{}}}}",
            "\u{0}{{\u{0}",
            "{{context.a|default:\"\\",
            "{{context.a|default:\"é\\é\"}}",
            "{{ task.type |",
            "{{task.type|default",
            "{{task.type|default:",
        ];
        for s in samples {
            let _ = Template::parse(s).map(|t| t.render(|_| None));
        }
        // Every prefix of a valid template.
        let full = "ab {{ context.name | default: \"é\\\"x\" }} c {{knowledge}}";
        for (i, _) in full.char_indices() {
            let _ = Template::parse(&full[..i]);
        }
    }
}
