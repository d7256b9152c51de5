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
    start_server(sim, Vec::new(), env, None).await
}

/// Bind a port, configure the server from the usual test variables plus
/// `extra` and `env` (later entries win), and serve it in the background.
pub async fn start_server(
    sim: RealtimeSim,
    extra: Vec<(String, String)>,
    env: &[(&str, &str)],
    store: Option<voxbridge_store::Store>,
) -> TestApp {
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
    let overrides = extra
        .into_iter()
        .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    for (k, v) in overrides {
        vars.retain(|(n, _)| *n != k);
        vars.push((k, v));
    }
    let config = Config::from_sources(None, |k| {
        vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    })
    .expect("config");
    let public_url = config.public_url.clone();
    let state = App::build_with(config, store);
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
/// Whether every model socket the simulator accepted is closed within 3 s.
pub async fn model_sockets_close(app: &TestApp) -> bool {
    eventually(Duration::from_secs(3), || {
        app.sim.connections().iter().all(|c| c.closed_at.is_some())
    })
    .await
}

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

/// Which database a full app uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL admin URL for tests (CI sets it), if any.
pub fn pg_admin_url() -> Option<String> {
    std::env::var("VOXBRIDGE_TEST_PG_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// True (with a note) when no PostgreSQL is available for the PostgreSQL
/// variant of a test; `scripts/test.sh` always provides one.
/// Two tests of `$run(Backend)`: `$sqlite`, and `$postgres` when a server is configured
/// (`VOXBRIDGE_TEST_PG_URL`; skipped without one).
macro_rules! on_both_backends {
    ($run:ident => $sqlite:ident, $postgres:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            $run($crate::helpers::Backend::Sqlite).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            if $crate::helpers::skip_without_postgres() {
                return;
            }
            $run($crate::helpers::Backend::Postgres).await;
        }
    };
}
pub(crate) use on_both_backends;

pub fn skip_without_postgres() -> bool {
    let skip = pg_admin_url().is_none();
    if skip {
        eprintln!("VOXBRIDGE_TEST_PG_URL not set: PostgreSQL variant skipped");
    }
    skip
}

/// A fresh database URL for one test.
pub async fn fresh_database(backend: Backend) -> String {
    let name = format!("vbapi_{}", uuid::Uuid::new_v4().simple());
    match backend {
        Backend::Sqlite => {
            let dir = std::env::temp_dir().join("voxbridge-tests");
            std::fs::create_dir_all(&dir).expect("temp dir");
            format!("sqlite://{}/{name}.db", dir.display())
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = pg_admin_url().expect("VOXBRIDGE_TEST_PG_URL");
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .expect("connect to PostgreSQL admin URL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .expect("create database");
            let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
            format!("{base}/{name}")
        }
    }
}

pub const ACCOUNT_SID_FULL: &str = "AC11111111111111111111111111111111";
pub const FROM_NUMBER: &str = "+14155550199";

/// The whole product: server with a store and a Twilio REST client pointed
/// at the Twilio emulator, which dials back with the caller emulator.
pub struct FullApp {
    pub app: TestApp,
    pub twilio: voxbridge_sim::twilio_api::TwilioEmulator,
    pub store: voxbridge_store::Store,
    pub api_key: String,
    pub http: reqwest::Client,
}

impl FullApp {
    pub fn url(&self, path: &str) -> String {
        self.app.http(path)
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .bearer_auth(&self.api_key)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .expect("request")
    }

    /// Poll the call until its status is terminal.
    pub async fn wait_terminal(&self, id: &str, timeout: Duration) -> serde_json::Value {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let v: serde_json::Value = self
                .get(&format!("/v1/calls/{id}"))
                .await
                .json()
                .await
                .expect("json");
            let status = v["status"].as_str().unwrap_or_default();
            let done = voxbridge_store::is_terminal_status(status);
            if (done && v["end_reason"].is_string()) || tokio::time::Instant::now() >= end {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub async fn spawn_full(
    backend: Backend,
    emu: voxbridge_sim::twilio_api::TwilioEmulatorConfig,
    env: &[(&str, &str)],
) -> FullApp {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emu = voxbridge_sim::twilio_api::TwilioEmulatorConfig {
        account_sid: ACCOUNT_SID_FULL.into(),
        auth_token: AUTH_TOKEN.into(),
        ..emu
    };
    let twilio = voxbridge_sim::twilio_api::TwilioEmulator::start(emu)
        .await
        .expect("twilio emulator");
    let db = fresh_database(backend).await;
    let store = voxbridge_store::Store::connect(&db).await.expect("store");
    let (_, api_key) = store.create_api_key("tests").await.expect("api key");
    let sim = RealtimeSim::start(sim_config())
        .await
        .expect("simulator starts");
    let extra = vec![
        ("TWILIO_ACCOUNT_SID".to_owned(), ACCOUNT_SID_FULL.to_owned()),
        ("TWILIO_PHONE_NUMBER".to_owned(), FROM_NUMBER.to_owned()),
        ("TWILIO_API_BASE".to_owned(), twilio.base_url()),
        ("DATABASE_URL".to_owned(), db),
    ];
    let app = start_server(sim, extra, env, Some(store.clone())).await;
    FullApp {
        app,
        twilio,
        store,
        api_key,
        http: reqwest::Client::new(),
    }
}

/// The callee's side of an outbound test call.
pub fn callee_script() -> Vec<CallerStep> {
    vec![
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 300,
            timeout_ms: 10_000,
        },
        CallerStep::Speak { ms: 900 },
        CallerStep::WaitAgentSpeaking { timeout_ms: 5_000 },
        CallerStep::WaitAgentQuiet {
            quiet_ms: 300,
            timeout_ms: 15_000,
        },
        CallerStep::Hangup,
    ]
}

/// A Twilio emulator serving the account the full apps use (`ACCOUNT_SID_FULL`,
/// webhooks signed with `AUTH_TOKEN`).
pub async fn start_twilio(
    emu: voxbridge_sim::twilio_api::TwilioEmulatorConfig,
) -> voxbridge_sim::twilio_api::TwilioEmulator {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let emu = voxbridge_sim::twilio_api::TwilioEmulatorConfig {
        account_sid: ACCOUNT_SID_FULL.into(),
        auth_token: AUTH_TOKEN.into(),
        ..emu
    };
    voxbridge_sim::twilio_api::TwilioEmulator::start(emu)
        .await
        .expect("twilio emulator")
}

/// One node of a cluster: a server on the database `db` with its own pool, port
/// and `PUBLIC_URL`, the model simulator `sim`, and the Twilio REST client pointed
/// at `twilio` (started with [`start_twilio`]). `env` overrides settings (e.g.
/// `NODE_ID`, `CAMPAIGN_*`). Start several on one PostgreSQL for a cluster.
pub async fn spawn_node(
    db: &str,
    twilio: &voxbridge_sim::twilio_api::TwilioEmulator,
    sim: RealtimeSim,
    env: &[(&str, &str)],
) -> TestApp {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let store = voxbridge_store::Store::connect(db).await.expect("store");
    let extra = vec![
        ("TWILIO_ACCOUNT_SID".to_owned(), ACCOUNT_SID_FULL.to_owned()),
        ("TWILIO_PHONE_NUMBER".to_owned(), FROM_NUMBER.to_owned()),
        ("TWILIO_API_BASE".to_owned(), twilio.base_url()),
        ("DATABASE_URL".to_owned(), db.to_owned()),
    ];
    start_server(sim, extra, env, Some(store)).await
}

/// The inbound number the SIP tests' agent answers.
pub const SIP_AGENT_NUMBER: &str = "+14155550123";
/// The caller of the SIP tests.
pub const SIP_CALLER: &str = "+14155550111";

/// A server answering OpenAI SIP connector calls: the SIP connector emulator
/// (the Calls API, signed webhooks and the sideband, with its Realtime
/// simulator as the model), a fresh SQLite store, and `AGENTS_DIR` holding
/// one profile file.
pub struct SipApp {
    pub app: TestApp,
    pub sip: voxbridge_sim::sip::SipConnector,
    pub store: voxbridge_store::Store,
    pub agents_dir: std::path::PathBuf,
}

impl SipApp {
    /// The stored call, once `pred` holds for it (or the last one seen after `timeout`).
    pub async fn stored_call(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&voxbridge_store::CallRecord) -> bool,
    ) -> Option<voxbridge_store::CallRecord> {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            let rec = self.store.get_call(id).await.expect("store");
            if rec.as_ref().is_some_and(&pred) || tokio::time::Instant::now() >= end {
                return rec;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Start a SIP connector emulator running `model` (its API key is set to
/// [`API_KEY`]) and a server with a fresh SQLite store whose `AGENTS_DIR`
/// holds `profiles` (file name, text). The server's `OPENAI_API_BASE`,
/// `OPENAI_REALTIME_URL` and `OPENAI_WEBHOOK_SECRET` point at the emulator,
/// whose webhooks go to the server's `/openai/webhook`; `env` overrides.
pub async fn spawn_sip(
    model: RealtimeSimConfig,
    profiles: &[(&str, &str)],
    env: &[(&str, &str)],
) -> SipApp {
    use voxbridge_sim::sip::{SipConnector, SipConnectorConfig};
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let sip = SipConnector::start(SipConnectorConfig {
        realtime: RealtimeSimConfig {
            api_key: Some(API_KEY.into()),
            ..model
        },
        ..SipConnectorConfig::default()
    })
    .await
    .expect("SIP connector emulator starts");
    let agents_dir = std::env::temp_dir().join(format!("vb-sip-agents-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&agents_dir).expect("agents dir");
    for (name, text) in profiles {
        std::fs::write(agents_dir.join(name), text).expect("write profile");
    }
    let db = fresh_database(Backend::Sqlite).await;
    let store = voxbridge_store::Store::connect(&db).await.expect("store");
    // The Media Streams side is unused here; its simulator only fills `TestApp::sim`.
    let idle = RealtimeSim::start(sim_config())
        .await
        .expect("simulator starts");
    let extra = vec![
        ("OPENAI_API_BASE".to_owned(), sip.api_base()),
        ("OPENAI_REALTIME_URL".to_owned(), sip.realtime_url()),
        (
            "OPENAI_WEBHOOK_SECRET".to_owned(),
            sip.webhook_secret().to_owned(),
        ),
        (
            "AGENTS_DIR".to_owned(),
            agents_dir.to_str().expect("utf-8 path").to_owned(),
        ),
        ("DATABASE_URL".to_owned(), db),
    ];
    let app = start_server(idle, extra, env, Some(store.clone())).await;
    if let Some(e) = app.state.agents.startup_error() {
        panic!("agent profiles did not load:\n{e}");
    }
    sip.set_webhook_url(app.http("/openai/webhook"));
    SipApp {
        app,
        sip,
        store,
        agents_dir,
    }
}
