//! The live set of agents: read at start, re-read when a profile file (or a
//! knowledge file one of them reads) changes, polled every 2 s, and on
//! SIGHUP. A reload is all or nothing: one that fails keeps the previous
//! agents and logs every error.

use super::{Agent, Agents, LoadError, profile};
use crate::config::Config;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// How often the profile files are checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

type Stamp = (PathBuf, Option<(SystemTime, u64)>);

/// What was on disk at the last load (or attempt).
#[derive(Debug, Default)]
struct Seen {
    stamps: Vec<Stamp>,
    /// Knowledge files read by the last load attempt.
    extra: Vec<PathBuf>,
}

/// The agents in force; cheap to read from any task.
#[derive(Debug)]
pub struct AgentRegistry {
    config: Config,
    env: fn(&str) -> Option<String>,
    current: RwLock<Arc<Agents>>,
    seen: Mutex<Seen>,
    startup_error: Option<LoadError>,
}

fn process_env(k: &str) -> Option<String> {
    std::env::var(k).ok()
}

fn stamp(p: &Path) -> Stamp {
    let s = std::fs::metadata(p)
        .ok()
        .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
    (p.to_path_buf(), s)
}

impl AgentRegistry {
    /// Load `config`'s agents and the profiles in its `AGENTS_DIR`. When the
    /// profiles do not load, the error is logged and kept
    /// ([`AgentRegistry::startup_error`]) and the `[[agents]]` alone serve.
    pub fn new(config: &Config) -> Self {
        Self::with_env(config, process_env)
    }

    /// The same with another environment lookup for `${ENV}` (tests).
    pub fn with_env(config: &Config, env: fn(&str) -> Option<String>) -> Self {
        let reg = AgentRegistry {
            config: config.clone(),
            env,
            current: RwLock::new(Arc::new(Agents::from_config(config))),
            seen: Mutex::new(Seen::default()),
            startup_error: None,
        };
        match reg.load_now() {
            Ok(n) => {
                info!(agents = n, names = %reg.names().join(", "),
                      dir = %config.agents_dir.display(), "agent profiles loaded");
                reg
            }
            Err(e) => {
                error!(dir = %config.agents_dir.display(), "agent profiles not loaded:\n{e}");
                AgentRegistry {
                    startup_error: Some(e),
                    ..reg
                }
            }
        }
    }

    /// The agents in force now (a consistent snapshot).
    pub fn current(&self) -> Arc<Agents> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Agent>> {
        self.current().get(name)
    }

    /// The agent answering calls to `number` (inbound), else `default`.
    pub fn for_number(&self, number: &str) -> Arc<Agent> {
        self.current().for_number(number)
    }

    pub fn names(&self) -> Vec<String> {
        self.current()
            .names()
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// The directory of profile files (`AGENTS_DIR`).
    pub fn dir(&self) -> &Path {
        &self.config.agents_dir
    }

    /// Why the profiles did not load at start, if they did not.
    pub fn startup_error(&self) -> Option<&LoadError> {
        self.startup_error.as_ref()
    }

    /// What is on disk now: the profile files and `extra`.
    fn stamps(&self, extra: &[PathBuf]) -> Vec<Stamp> {
        let mut files = profile::profile_files(&self.config.agents_dir).unwrap_or_default();
        files.extend(extra.iter().cloned());
        let mut stamps: Vec<Stamp> = files.iter().map(|p| stamp(p)).collect();
        // The directory itself: appearing or going away.
        stamps.push(stamp(&self.config.agents_dir));
        stamps
    }

    /// Load now; swap in the result when it is good.
    fn load_now(&self) -> Result<usize, LoadError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Stamps first: a file changed while being read is read again next time.
        let before = self.stamps(&[]);
        let result = Agents::load(&self.config, None, &self.env);
        let extra = match &result {
            Ok(a) => a.watched.clone(),
            Err(e) => e.watched.clone(),
        };
        let mut stamps = before;
        stamps.extend(extra.iter().map(|p| stamp(p)));
        *seen = Seen { stamps, extra };
        let agents = result?;
        let n = agents.len();
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(agents);
        Ok(n)
    }

    /// Re-read every profile, whatever changed; logs the outcome.
    pub fn reload(&self) -> Result<usize, LoadError> {
        let r = self.load_now();
        match &r {
            Ok(n) => info!(agents = n, names = %self.names().join(", "), "agent profiles reloaded"),
            Err(e) => {
                error!("agent profiles not reloaded; the previous agents stay in force:\n{e}")
            }
        }
        r
    }

    /// Reload when a profile or knowledge file was added, removed or
    /// changed since the last attempt; `None` when nothing changed.
    pub fn reload_if_changed(&self) -> Option<Result<usize, LoadError>> {
        let changed = {
            let seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut now = self.stamps(&[]);
            now.extend(seen.extra.iter().map(|p| stamp(p)));
            now != seen.stamps
        };
        changed.then(|| self.reload())
    }

    /// Poll for changes every `POLL_INTERVAL` (2 s) and reload on SIGHUP (unix)
    /// until `stop`. File system work runs on the blocking pool.
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            let hangup = async {
                match hup.as_mut() {
                    Some(s) => s.recv().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let hangup = std::future::pending::<bool>();
            let forced = tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => false,
                got = hangup => {
                    if !got {
                        #[cfg(unix)]
                        { hup = None; }
                        continue;
                    }
                    info!("SIGHUP: reloading agent profiles");
                    true
                }
            };
            let me = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if forced {
                    let _ = me.reload();
                } else {
                    let _ = me.reload_if_changed();
                }
            })
            .await;
        }
    }
}
