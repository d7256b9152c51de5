//! Agents and tasks (the small core that later grows into profile files):
//! which agent handles a call, and the instructions a task renders to.

use crate::config::{AgentConfig, Config};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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

/// A resolved agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub name: String,
    pub instructions: String,
    pub voice: String,
    pub model: String,
    pub greeting: String,
    pub numbers: Vec<String>,
}

/// The agents a config defines; `default` always exists.
#[derive(Debug, Clone)]
pub struct Agents {
    agents: Vec<Agent>,
}

impl Agents {
    pub fn from_config(c: &Config) -> Self {
        let resolve = |a: &AgentConfig| Agent {
            name: a.name.clone(),
            instructions: a
                .instructions
                .clone()
                .unwrap_or_else(|| c.instructions.clone()),
            voice: a.voice.clone().unwrap_or_else(|| c.voice.clone()),
            model: a.model.clone().unwrap_or_else(|| c.openai_model.clone()),
            greeting: a.greeting.clone().unwrap_or_else(|| c.greeting.clone()),
            numbers: a.numbers.clone(),
        };
        let mut agents: Vec<Agent> = c.agents.iter().map(resolve).collect();
        if !agents.iter().any(|a| a.name == "default") {
            agents.insert(
                0,
                resolve(&AgentConfig {
                    name: "default".into(),
                    instructions: None,
                    voice: None,
                    model: None,
                    greeting: None,
                    numbers: Vec::new(),
                }),
            );
        }
        Agents { agents }
    }

    pub fn get(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name == name)
    }

    /// The agent answering calls to `number` (inbound), else `default`.
    pub fn for_number(&self, number: &str) -> &Agent {
        self.agents
            .iter()
            .find(|a| a.numbers.iter().any(|n| n == number))
            .or_else(|| self.get("default"))
            .unwrap_or(&self.agents[0])
    }

    pub fn names(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.name.as_str()).collect()
    }
}

/// The instructions for `agent` doing `task` (if any).
pub fn render_instructions(agent: &Agent, task: Option<&Task>) -> String {
    let Some(task) = task else {
        return agent.instructions.clone();
    };
    let mut s = agent.instructions.clone();
    s.push_str("\n\n# This call\n");
    s.push_str(&format!("Task type: {}\n", task.kind));
    if !task.prompt.is_empty() {
        s.push_str(&format!("Task: {}\n", task.prompt));
    }
    if !task.context.is_empty() {
        s.push_str("Context:\n");
        for (k, v) in &task.context {
            s.push_str(&format!("- {k}: {v}\n"));
        }
    }
    s.push_str(
        "You are an AI assistant: say so at the start. State the purpose of the call, do the \
         task, confirm what was agreed, and close politely. If the person asks for a human, \
         say you will pass the request on.",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_resolve_and_tasks_render() {
        let mut c = Config::default();
        c.agents.push(AgentConfig {
            name: "reminder".into(),
            instructions: Some("You remind people of appointments.".into()),
            voice: Some("cedar".into()),
            model: None,
            greeting: None,
            numbers: vec!["+14155550123".into()],
        });
        let agents = Agents::from_config(&c);
        assert_eq!(agents.names(), vec!["default", "reminder"]);
        assert_eq!(agents.for_number("+14155550123").name, "reminder");
        assert_eq!(agents.for_number("+19999999999").name, "default");
        let r = agents.get("reminder").expect("agent");
        assert_eq!(r.voice, "cedar");
        assert_eq!(r.model, "gpt-realtime-2.1");
        let task = Task {
            kind: "appointment_reminder".into(),
            prompt: "Remind Ana of her dentist visit tomorrow at 10.".into(),
            context: BTreeMap::from([("name".into(), "Ana".into())]),
        };
        let text = render_instructions(r, Some(&task));
        assert!(text.starts_with("You remind people"));
        assert!(text.contains("Task: Remind Ana"));
        assert!(text.contains("- name: Ana"));
        assert_eq!(render_instructions(r, None), r.instructions);
    }
}
