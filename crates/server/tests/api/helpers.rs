//! `spawn_app()`: a server on an ephemeral port wired to a fresh simulator.

#![allow(dead_code)]

use std::time::Duration;
use voxbridge::config::Config;
use voxbridge::{App, AppState, app};
use voxbridge_sim::caller::{CallerConfig, CallerStep};
use voxbridge_sim::realtime::{RealtimeSim, RealtimeSimConfig, SimReply};

pub const AUTH_TOKEN: &str = "test-twilio-auth-token";
pub const API_KEY: &str = "sk-test";

pub struct TestApp {
    pub port: u16,
    pub public_url: String,
    pub sim: RealtimeSim,
    pub state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestApp {
    /// A caller configured for this server (signed requests, loopback).
    pub fn caller(&self, script: Vec<CallerStep>) -> CallerConfig {
        CallerConfig {
            voice_url: format!("http://127.0.0.1:{}/twilio/voice", self.port),
            public_url: self.public_url.clone(),
            auth_token: Some(AUTH_TOKEN.into()),
            connect_base: Some(format!("ws://127.0.0.1:{}", self.port)),
            script,
            ..CallerConfig::default()
        }
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{path}", self.port)
    }

    /// The Stream URL the TwiML carries (what Twilio signs on the upgrade).
    pub fn stream_url(&self) -> String {
        self.state.config.stream_url()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// The model's script used by most tests.
pub fn sim_config() -> RealtimeSimConfig {
    RealtimeSimConfig {
        api_key: Some(API_KEY.into()),
        caller_transcripts: vec![
            "I would like to check my order.".into(),
            "Thanks, that is all.".into(),
            "Bye.".into(),
        ],
        replies: vec![
            SimReply {
                text: "Hi, I'm an AI assistant. How can I help?".into(),
                audio_ms: 1200,
            },
            SimReply {
                text: "Let me look that up for you, it will take a moment while I check the \
                       system for your most recent order and its delivery date."
                    .into(),
                audio_ms: 5000,
            },
            SimReply {
                text: "Sure.".into(),
                audio_ms: 800,
            },
        ],
        ..RealtimeSimConfig::default()
    }
}

/// Start a simulator and a server; `env` overrides settings by variable name.
pub async fn spawn_app_with(sim_cfg: RealtimeSimConfig, env: &[(&str, &str)]) -> TestApp {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sim = RealtimeSim::start(sim_cfg).await.expect("simulator starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let mut vars: Vec<(String, String)> = vec![
        ("PUBLIC_URL".into(), format!("http://127.0.0.1:{port}")),
        ("PORT".into(), port.to_string()),
        ("OPENAI_API_KEY".into(), API_KEY.into()),
        ("OPENAI_REALTIME_URL".into(), sim.ws_url()),
        ("TWILIO_AUTH_TOKEN".into(), AUTH_TOKEN.into()),
    ];
    for (k, v) in env {
        vars.retain(|(n, _)| n != k);
        vars.push(((*k).into(), (*v).into()));
    }
    let config = Config::from_sources(None, |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .expect("config");
    let public_url = config.public_url.clone();
    let state = App::build(config);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app::run(state.clone(), listener, async {
        let _ = rx.await;
    }));
    TestApp {
        port,
        public_url,
        sim,
        state,
        stop: Some(tx),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(sim_config(), &[]).await
}

/// Poll `f` every 10 ms until it is true or `timeout` passes.
pub async fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Append every client event the simulator received to the conformance
/// file, when the test script asks for it (`VOXBRIDGE_CONFORMANCE_DIR`).
pub fn export_client_events(sim: &RealtimeSim) {
    let Ok(dir) = std::env::var("VOXBRIDGE_CONFORMANCE_DIR") else {
        return;
    };
    let _ = std::fs::create_dir_all(&dir);
    let path = std::path::Path::new(&dir).join("realtime_client_events.jsonl");
    let mut text = String::new();
    for ev in sim.events() {
        text.push_str(&ev.to_string());
        text.push('\n');
    }
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("conformance file");
    f.write_all(text.as_bytes())
        .expect("write conformance file");
}
