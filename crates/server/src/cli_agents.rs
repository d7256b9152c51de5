//! `voxbridge agents check|list|show`: agent profiles, offline.

use anyhow::Context as _;
use clap::Subcommand;
use std::path::{Path, PathBuf};
use voxbridge::agents::{self, Agent, Agents};
use voxbridge::config::Config;

#[derive(Subcommand, Debug)]
pub(crate) enum AgentsCommand {
    /// Load every profile (and the config's `[[agents]]`), render each one's
    /// templates with a sample task, print one line per agent; exit non-zero
    /// with every error (file and field) when any profile is invalid.
    Check {
        /// Profile directory (default: AGENTS_DIR, else `agents`).
        dir: Option<PathBuf>,
    },
    /// The agents, one a line: name, task type, voice, tools, source.
    List {
        /// Profile directory (default: AGENTS_DIR, else `agents`).
        dir: Option<PathBuf>,
    },
    /// One agent's instructions, greeting and disclosure, rendered with a
    /// sample task.
    Show {
        name: String,
        /// Profile directory (default: AGENTS_DIR, else `agents`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

pub(crate) fn run(config: Option<&Path>, command: AgentsCommand) -> anyhow::Result<()> {
    let config = Config::load(config).context("loading the configuration")?;
    let env = |k: &str| std::env::var(k).ok();
    let dir_of = |d: &Option<PathBuf>| d.clone().unwrap_or_else(|| config.agents_dir.clone());
    match command {
        AgentsCommand::Check { dir } => {
            let dir = dir_of(&dir);
            if !dir.is_dir() {
                anyhow::bail!("{}: no such directory", dir.display());
            }
            let agents = match Agents::load(&config, Some(&dir), &env) {
                Ok(a) => a,
                Err(e) => {
                    for err in &e.errors {
                        eprintln!("error: {err}");
                    }
                    anyhow::bail!(
                        "{} error(s) in the agent profiles of {}",
                        e.errors.len(),
                        dir.display()
                    );
                }
            };
            let mut failed = 0;
            for a in agents.iter() {
                let task = agents::sample_task(a);
                match agents::check_task(a, Some(&task)).and_then(|()| {
                    agents::call_texts(a, Some(&task), config.agent_speaks_first).map(drop)
                }) {
                    Ok(()) => println!("ok  {}", line(a)),
                    Err(e) => {
                        failed += 1;
                        eprintln!("error: {}: {e}", a.source);
                    }
                }
            }
            if failed > 0 {
                anyhow::bail!("{failed} agent(s) do not render");
            }
            println!("{} agent(s) OK in {}", agents.len(), dir.display());
            Ok(())
        }
        AgentsCommand::List { dir } => {
            let dir = dir_of(&dir);
            let agents = Agents::load(&config, Some(&dir), &env)
                .map_err(|e| anyhow::anyhow!("{e}\n(run `voxbridge agents check` for details)"))?;
            for a in agents.iter() {
                println!("{}", line(a));
            }
            Ok(())
        }
        AgentsCommand::Show { name, dir } => {
            let dir = dir_of(&dir);
            let agents =
                Agents::load(&config, Some(&dir), &env).map_err(|e| anyhow::anyhow!("{e}"))?;
            let a = agents.get(&name).with_context(|| {
                format!(
                    "no agent named {name:?}; known: {}",
                    agents.names().join(", ")
                )
            })?;
            let task = agents::sample_task(&a);
            let texts = agents::call_texts(&a, Some(&task), config.agent_speaks_first)?;
            println!("# {} ({})\n", a.name, a.source);
            println!("sample task: {}", serde_json::to_string(&task)?);
            println!("\n## instructions\n{}", texts.instructions);
            if let Some(g) = texts.greeting {
                println!("\n## greeting\n{g}");
            }
            if let Some(m) = a.voicemail_message_for(Some(&task))? {
                println!("\n## voicemail message\n{m}");
            }
            Ok(())
        }
    }
}

/// `name  task_type  voice  tools  source`.
fn line(a: &Agent) -> String {
    let mut tools: Vec<&str> = a.tools.iter().map(String::as_str).collect();
    tools.extend(a.http_tools.iter().map(|t| t.name.as_str()));
    format!(
        "{:<24} {:<21} {:<8} tools: {:<50} {}",
        a.name,
        a.task_type.as_str(),
        a.voice,
        if tools.is_empty() {
            "-".to_owned()
        } else {
            tools.join(",")
        },
        a.source
    )
}
