//! The HTTP application: `/health`, the Twilio voice webhook and the
//! Twilio media WebSocket.

use crate::agents::{Agent, AgentRegistry, RenderError, Task};
use crate::api;
use crate::campaign;
use crate::config::Config;
use crate::hub::{CallEventKind, EventHub};
use crate::playback::PacerConfig;
use crate::session::{self, CallSettings, ModelFuture, ModelLink};
use crate::token;
use crate::ws::{self, CLOSE_POLICY, Link, WsIn, WsOut};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{info, warn};
use voxbridge_realtime::session::SessionConfig;
use voxbridge_twilio::media::{self, Inbound, Start};
use voxbridge_twilio::rest::{Auth, TwilioClient};
use voxbridge_twilio::signature;
use voxbridge_twilio::twiml::ConnectStream;

/// Everything a request handler may need. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The application.
pub struct App {
    pub config: Config,
    /// Call events, for the CLI, logs and (later) storage and `/v1/events`.
    pub hub: EventHub,
    /// The database (calls, transcripts, keys); `None` runs the bridge alone.
    pub store: Option<voxbridge_store::Store>,
    /// Twilio REST client, when credentials are configured.
    pub twilio: Option<TwilioClient>,
    /// Agents by name and by number; re-read when their profile files change.
    pub agents: Arc<AgentRegistry>,
    /// Requests per minute per API key.
    pub limiter: governor::DefaultKeyedRateLimiter<String>,
    /// Secret behind the per-call stream tokens.
    stream_secret: Vec<u8>,
    /// Model sockets opened while answering the voice webhook, waiting for
    /// their media socket, by call id.
    preconnected: Mutex<HashMap<String, Preconnected>>,
    /// Numbers the pre-connects (`Preconnected::seq`).
    preconnect_seq: AtomicU64,
    /// Call ids whose media socket was accepted, with when: a call id is
    /// claimed once (a replayed `start` is refused). Pruned after the token TTL.
    claimed: Mutex<HashMap<String, std::time::Instant>>,
    /// Calls in progress on this node (pre-connected or streaming).
    active_calls: AtomicUsize,
    /// This node's name (`NODE_ID`, or random): written on the campaign attempts it
    /// dials and on the events it shares with other nodes.
    pub node_id: String,
    /// Wakes the campaign worker early (a campaign was created or resumed, a call ended).
    pub campaign_wake: tokio::sync::Notify,
    /// The realtime model provider (`None` without `OPENAI_API_KEY`).
    pub provider: Option<Arc<dyn crate::provider::ModelProvider>>,
    /// OpenAI webhook ids and SIP call ids already handled (redeliveries are acknowledged,
    /// not acted on twice).
    pub sip_seen: crate::sip::Seen,
    /// HTTP client of the agents' HTTP tools (connection pool shared by all calls).
    pub http: reqwest::Client,
    /// Running Media Streams sessions by call id, for news from other requests (e.g.
    /// Twilio's asynchronous answering-machine verdict).
    pub live: Mutex<HashMap<String, tokio::sync::mpsc::UnboundedSender<session::Signal>>>,
    /// Live events to and from the other nodes on the same PostgreSQL
    /// (`None` on SQLite or without a store). Dropping the app stops its tasks.
    pub cluster: Option<crate::cluster::Cluster>,
}

/// A model socket being opened for a call, and the call's settings.
struct Preconnected {
    model: oneshot::Receiver<Result<ModelLink, String>>,
    settings: Arc<CallSettings>,
    /// Which answer of the webhook opened it: a repeated webhook replaces the entry, and
    /// the first answer's expiry must then leave the second one alone.
    seq: u64,
}

/// An HTTP error as `{"error": …, "code": …}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(json!({"error": self.message, "code": self.code})),
        )
            .into_response()
    }
}

impl App {
    /// Build the bridge alone (no database, no Twilio REST): what `demo`
    /// and the bridge tests need.
    pub fn build(config: Config) -> AppState {
        Self::build_with(config, None)
    }

    /// Build the application; with a store, call events are persisted and
    /// the REST API is served.
    pub fn build_with(config: Config, store: Option<voxbridge_store::Store>) -> AppState {
        let stream_secret = match (&config.stream_secret, &config.twilio_auth_token) {
            (Some(s), _) => s.as_bytes().to_vec(),
            (None, Some(t)) => {
                use sha2::Digest;
                sha2::Sha256::digest(format!("voxbridge-stream-secret:{t}").as_bytes()).to_vec()
            }
            (None, None) => rand::random::<[u8; 32]>().to_vec(),
        };
        let (mut hub, persist_rx) = if store.is_some() {
            let (hub, rx) = EventHub::with_persistence(1024);
            (hub, Some(rx))
        } else {
            (EventHub::default(), None)
        };
        if let (Some(store), Some(rx)) = (&store, persist_rx) {
            tokio::spawn(crate::persist::run_writer(store.clone(), rx));
        }
        let twilio = twilio_client(&config);
        let provider = config.openai_api_key.as_ref().and_then(|key| {
            match crate::provider::OpenAiRealtime::new(
                &config.openai_realtime_url,
                &config.openai_api_base,
                key,
            ) {
                Ok(p) => Some(Arc::new(p) as Arc<dyn crate::provider::ModelProvider>),
                Err(e) => {
                    warn!(error = %e, "the OpenAI provider cannot be set up; calls are refused");
                    None
                }
            }
        });
        let node_id = config
            .node_id
            .clone()
            .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
        // Before the hub is cloned anywhere: every clone must forward to the cluster.
        let cluster = store
            .as_ref()
            .and_then(|s| s.pg_pool())
            .map(|pool| crate::cluster::Cluster::start(pool.clone(), &node_id, &mut hub));
        let quota = governor::Quota::per_minute(
            std::num::NonZeroU32::new(config.rate_limit_per_minute)
                .unwrap_or(std::num::NonZeroU32::MIN),
        );
        AppState(Arc::new(App {
            agents: Arc::new(AgentRegistry::new(&config)),
            config,
            hub,
            store,
            twilio,
            limiter: governor::RateLimiter::keyed(quota),
            stream_secret,
            preconnected: Mutex::new(HashMap::new()),
            preconnect_seq: AtomicU64::new(0),
            claimed: Mutex::new(HashMap::new()),
            active_calls: AtomicUsize::new(0),
            node_id,
            campaign_wake: tokio::sync::Notify::new(),
            provider,
            sip_seen: crate::sip::Seen::default(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            live: Mutex::new(HashMap::new()),
            cluster,
        }))
    }

    /// The store, or a 503 when the server runs without one.
    pub fn store(&self) -> Result<&voxbridge_store::Store, ApiError> {
        self.store.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "STORE_NOT_CONFIGURED",
                "this server runs without a database",
            )
        })
    }

    /// A SIP connector call started (counts toward `MAX_CALLS`).
    pub fn sip_call_started(&self) {
        self.active_calls.fetch_add(1, Ordering::Relaxed);
    }

    /// A SIP connector call ended.
    pub fn sip_call_ended(&self) {
        self.active_calls.fetch_sub(1, Ordering::Relaxed);
    }

    /// Calls in progress on this node.
    pub fn active_calls(&self) -> usize {
        self.active_calls.load(Ordering::Relaxed)
    }

    /// Whether a media socket for `call_id` was accepted on this node (within the token
    /// TTL) or its session is running here.
    fn streaming_here(&self, call_id: &str) -> bool {
        let ttl = Duration::from_millis(self.config.preconnect_ttl_ms);
        let claimed = self
            .claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(call_id)
            .is_some_and(|at| at.elapsed() <= ttl);
        claimed
            || self
                .live
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains_key(call_id)
    }

    /// Claim `call_id` for a media socket; false if it was claimed before.
    fn claim(&self, call_id: &str) -> bool {
        let ttl = Duration::from_millis(self.config.preconnect_ttl_ms);
        let mut claimed = self
            .claimed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if claimed.len() > 1024 {
            claimed.retain(|_, at| at.elapsed() <= ttl);
        }
        match claimed.get(call_id) {
            Some(at) if at.elapsed() <= ttl => false,
            _ => {
                claimed.insert(call_id.to_owned(), std::time::Instant::now());
                true
            }
        }
    }

    fn preconnected(&self) -> std::sync::MutexGuard<'_, HashMap<String, Preconnected>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.preconnected
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The Twilio REST client the config describes, if any.
fn twilio_client(config: &Config) -> Option<TwilioClient> {
    let account = config.twilio_account_sid.clone()?;
    let auth = match (
        &config.twilio_api_key_sid,
        &config.twilio_api_key_secret,
        &config.twilio_auth_token,
    ) {
        (Some(sid), Some(secret), _) => Auth::ApiKey {
            key_sid: sid.clone(),
            secret: secret.clone(),
        },
        (_, _, Some(token)) => Auth::AccountToken {
            auth_token: token.clone(),
        },
        _ => return None,
    };
    match TwilioClient::new(&config.twilio_api_base, &account, auth) {
        Ok(c) => Some(c),
        Err(e) => {
            warn!(error = %e, "Twilio REST client not usable");
            None
        }
    }
}

/// The settings of one call: agent, task and overrides. The agent's
/// templates are rendered here: a template that does not render for this
/// task (a missing context key) is an error, never broken instructions.
pub fn settings_for(
    config: &Config,
    agent: &Agent,
    task: Option<&Task>,
    voice: Option<&str>,
    model: Option<&str>,
) -> Result<CallSettings, RenderError> {
    let texts = crate::agents::call_texts(agent, task, config.agent_speaks_first)?;
    let turn = agent.turn_detection.clone();
    let tools = crate::tools::for_agent(agent, task);
    Ok(CallSettings {
        session: SessionConfig::phone(
            model.unwrap_or(&agent.model),
            texts.instructions,
            voice.unwrap_or(&agent.voice),
            turn.clone(),
            agent.transcription.clone(),
            config.noise_reduction(),
        )
        .with_tools(tools.function_tools()),
        turn_detection: turn,
        greeting: texts.greeting,
        greeting_protected: config.greeting_uninterruptible,
        pacer: PacerConfig {
            lead: Duration::from_millis(config.pacing_lead_ms),
            mark_interval_ms: config.mark_interval_ms,
            batch: Duration::from_millis(config.pacing_batch_ms),
        },
        input_buffer_ms: config.input_buffer_ms,
        tools: Arc::new(tools),
        max_duration: Some(Duration::from_secs(u64::from(agent.max_call_duration_s)))
            .filter(|d| !d.is_zero()),
        silence_timeout: agent
            .silence_timeout_s
            .map(|s| Duration::from_secs(u64::from(s))),
    })
}

/// The settings of a stored call (outbound: its agent and task).
fn settings_for_record(
    state: &App,
    call: &voxbridge_store::CallRecord,
) -> Result<CallSettings, RenderError> {
    let agent = state
        .agents
        .get(&call.agent)
        .unwrap_or_else(|| state.agents.for_number(&call.to_number));
    let extra = call.task.clone().unwrap_or_default();
    let task: Option<Task> = serde_json::from_value(extra["task"].clone()).ok();
    settings_for(
        &state.config,
        &agent,
        task.as_ref(),
        extra["voice"].as_str(),
        extra["model"].as_str(),
    )
}

/// A call whose agent templates do not render: refused, with the reason.
fn render_failed(call_id: &str, e: &RenderError) -> ApiError {
    warn!(%call_id, error = %e, "call refused: its agent's templates do not render");
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "AGENT_TEMPLATE_ERROR",
        e.to_string(),
    )
}

/// The router.
pub fn router(state: AppState) -> Router {
    use axum::extract::DefaultBodyLimit;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let max_body = state.config.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/calls", post(api::create_call).get(api::list_calls))
        .route("/v1/calls/{id}", get(api::get_call))
        .route("/v1/calls/{id}/transcript", get(api::get_transcript))
        .route("/v1/calls/{id}/hangup", post(api::hangup_call))
        .route("/v1/events", get(api::events))
        .route("/v1/openapi.json", get(api::openapi))
        .route(
            "/v1/campaigns",
            post(campaign::api::create_campaign).get(campaign::api::list_campaigns),
        )
        .route("/v1/campaigns/{id}", get(campaign::api::get_campaign))
        .route(
            "/v1/campaigns/{id}/contacts",
            post(campaign::api::add_contacts).get(campaign::api::list_contacts),
        )
        .route(
            "/v1/campaigns/{id}/contacts/{contact_id}",
            get(campaign::api::get_contact),
        )
        .route("/v1/campaigns/{id}/pause", post(campaign::api::pause))
        .route("/v1/campaigns/{id}/resume", post(campaign::api::resume))
        .route("/v1/campaigns/{id}/cancel", post(campaign::api::cancel))
        .route(
            "/v1/dnc",
            post(campaign::api::add_dnc).get(campaign::api::list_dnc),
        )
        .route(
            "/v1/dnc/{phone}",
            axum::routing::delete(campaign::api::remove_dnc),
        )
        .layer(DefaultBodyLimit::max(max_body));
    Router::new()
        .route("/health", get(health))
        .route("/twilio/voice", post(voice))
        .route("/twilio/media", get(media_socket))
        .route("/twilio/status", post(twilio_status))
        .route("/twilio/recording", post(twilio_recording))
        .route("/openai/webhook", post(crate::sip::webhook))
        .merge(v1)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "method not allowed on this route",
            )
        })
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Serve `router` on a bound listener until `shutdown` resolves.
pub async fn run(
    state: AppState,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Media frames are small and latency-bound: never let Nagle's
    // algorithm hold one back waiting for an ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    if let Some(e) = state.agents.startup_error() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "agent profiles in {} do not load:\n{e}",
                state.agents.dir().display()
            ),
        ));
    }
    let stop = tokio_util::sync::CancellationToken::new();
    // Agent profiles: re-read when their files change, and on SIGHUP.
    tokio::spawn(state.agents.clone().watch(stop.clone()));
    if state.config.campaign_worker {
        tokio::spawn(crate::campaign::worker::run(
            state.clone(),
            stop.clone().cancelled_owned(),
        ));
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await
}

async fn health() -> impl IntoResponse {
    axum::Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// Check X-Twilio-Signature when an auth token is configured.
fn check_signature(
    state: &App,
    headers: &HeaderMap,
    url: &str,
    params: &[(String, String)],
) -> Result<(), ApiError> {
    let Some(auth_token) = &state.config.twilio_auth_token else {
        return Ok(());
    };
    let sig = headers
        .get("x-twilio-signature")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::FORBIDDEN,
                "SIGNATURE_MISSING",
                "missing X-Twilio-Signature",
            )
        })?;
    if signature::validate_signature(auth_token, url, params, sig) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "SIGNATURE_INVALID",
            "X-Twilio-Signature does not match",
        ))
    }
}

/// `POST /twilio/voice`: answer with TwiML that opens a bidirectional
/// Media Stream, and start opening the model socket right away.
///
/// An inbound call's row is written with its CallSid in one insert. The same CallSid
/// again (Twilio retries a webhook whose answer did not arrive) answers the same call
/// again, with a fresh pre-connect in place of the first, until its stream has started;
/// then it is 409 `CALL_EXISTS`.
async fn voice(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let params = signed_form(&state, &uri, &headers, &body)?;
    let Some(provider) = state.provider.clone() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "MODEL_NOT_CONFIGURED",
            "OPENAI_API_KEY is not configured",
        ));
    };
    if state.active_calls() >= state.config.max_calls {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "OVER_CAPACITY",
            "this node is at its call limit",
        ));
    }
    let param = |name: &str| form_value(&params, name).unwrap_or_default().to_owned();
    let call_sid = param("CallSid");
    // Outbound calls carry our call id; inbound calls get one now. What must be
    // written to the store is only collected here: the model socket starts opening
    // first, and the writes overlap with its connect.
    let outbound_id = query_value(&uri, "call_id");
    let (mut call_id, settings, write) = match (&outbound_id, &state.store) {
        (Some(id), Some(store)) => {
            let call = store.get_call(id).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "CALL_NOT_FOUND",
                    format!("no call {id:?}"),
                )
            })?;
            let write = if call.twilio_call_sid.is_none() && !call_sid.is_empty() {
                Write::SetSid
            } else {
                Write::Nothing
            };
            let settings = settings_for_record(&state, &call).map_err(|e| render_failed(id, &e))?;
            (id.clone(), Arc::new(settings), write)
        }
        _ => {
            let id = uuid::Uuid::now_v7().to_string();
            let to = param("To");
            let agent = state.agents.for_number(&to);
            let settings = settings_for(&state.config, &agent, None, None, None)
                .map_err(|e| render_failed(&id, &e))?;
            let new_call = voxbridge_store::NewCall {
                id: id.clone(),
                direction: "inbound".into(),
                from_number: param("From"),
                to_number: to,
                agent: agent.name.clone(),
                task: None,
                status: "in-progress".into(),
                api_key_id: None,
                idempotency_key: None,
                twilio_call_sid: (!call_sid.is_empty()).then(|| call_sid.clone()),
                created_at_ms: token::now_ms() as i64,
            };
            (id, Arc::new(settings), Write::Create(Box::new(new_call)))
        }
    };

    // Pre-connect the model, keyed by our call id. If a store write below fails, the
    // receiver is dropped and the socket closes as soon as it is open.
    let (tx, rx) = oneshot::channel();
    let opener = provider.open_media_session(settings.clone());
    tokio::spawn(async move {
        let _ = tx.send(opener.await);
    });
    let mut repeated = false;
    match (&state.store, &write) {
        (Some(store), Write::Create(new_call)) => match store.create_call(new_call).await {
            Ok(_) => {}
            // The CallSid is another call's: a repeated webhook (Twilio retries when
            // our answer did not reach it in time) answers that call again.
            Err(voxbridge_store::StoreError::Conflict(why))
                if new_call.twilio_call_sid.is_some() =>
            {
                call_id = repeated_inbound(&state, store, &call_sid, why).await?;
                repeated = true;
            }
            Err(e) => return Err(e.into()),
        },
        (Some(store), Write::SetSid) => store.set_twilio_sid(&call_id, &call_sid).await?,
        _ => {}
    }
    let stream_token = token::stream_token(&state.stream_secret, &call_id, token::now_ms());
    let seq = state.preconnect_seq.fetch_add(1, Ordering::Relaxed);
    let replaced = state.preconnected().insert(
        call_id.clone(),
        Preconnected {
            model: rx,
            settings: settings.clone(),
            seq,
        },
    );
    // A repeated webhook's pre-connect takes the place of the first one (whose socket
    // closes as its receiver drops here) and its place in the count.
    if replaced.is_none() {
        state.active_calls.fetch_add(1, Ordering::Relaxed);
    }
    let expiry_state = state.clone();
    let expiry_id = call_id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(expiry_state.config.preconnect_ttl_ms)).await;
        let expired = {
            let mut map = expiry_state.preconnected();
            if map.get(&expiry_id).is_some_and(|p| p.seq == seq) {
                map.remove(&expiry_id)
            } else {
                None
            }
        };
        if expired.is_some() {
            // Nobody claimed it: dropping the receiver closes the socket.
            expiry_state.active_calls.fetch_sub(1, Ordering::Relaxed);
            warn!(call_id = %expiry_id, "pre-connected model socket expired unused");
        }
    });

    if !repeated {
        state.hub.publish(
            &call_id,
            CallEventKind::Answered {
                from: param("From"),
                to: param("To"),
            },
        );
    }
    info!(%call_id, %call_sid, from = %param("From"), to = %param("To"), "voice webhook answered");
    let twiml = ConnectStream {
        url: state.config.stream_url(),
        parameters: vec![("call_id".into(), call_id), ("token".into(), stream_token)],
        say: None,
        status_callback: None,
    }
    .to_xml();
    Ok(([(header::CONTENT_TYPE, "text/xml; charset=utf-8")], twiml).into_response())
}

/// What the voice webhook writes to the store once the model connect has started.
enum Write {
    /// An inbound call: its row, with the CallSid.
    Create(Box<voxbridge_store::NewCall>),
    /// An outbound call whose CallSid Twilio has just told us.
    SetSid,
    Nothing,
}

/// The call a repeated inbound voice webhook belongs to (found by its CallSid), if it
/// can be answered again: inbound, not ended, and no media stream started for it here
/// or, by its stored StreamSid, on another node. Otherwise 409 `CALL_EXISTS`.
/// `conflict` is the insert's error, kept for the case where no call has the CallSid
/// (the row was deleted in between).
async fn repeated_inbound(
    state: &AppState,
    store: &voxbridge_store::Store,
    call_sid: &str,
    conflict: String,
) -> Result<String, ApiError> {
    let Some(call) = store.call_by_twilio_sid(call_sid).await? else {
        return Err(ApiError::new(StatusCode::CONFLICT, "CONFLICT", conflict));
    };
    let answerable = call.direction == "inbound"
        && call.ended_at_ms.is_none()
        && !voxbridge_store::is_terminal_status(&call.status)
        && call.stream_sid.is_none()
        && !state.streaming_here(&call.id);
    if !answerable {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CALL_EXISTS",
            format!(
                "CallSid {call_sid} is call {}, which is already streaming or has ended",
                call.id
            ),
        ));
    }
    info!(call_id = %call.id, %call_sid, "repeated voice webhook: answering the same call again");
    Ok(call.id)
}

/// `GET /twilio/media`: the Media Stream WebSocket.
async fn media_socket(
    State(state): State<AppState>,
    mut req: Request,
) -> Result<Response, ApiError> {
    let upgrade = crate::upgrade::prepare(&mut req)?;
    // Twilio signs the handshake over the Stream URL with no parameters.
    // Reports say it uses the TwiML's wss:// URL; accept the same URL with
    // PUBLIC_URL's own scheme too, so a scheme difference cannot turn every
    // real call away (both come from our configuration, under the same key).
    let headers = req.headers();
    let stream_url = state.config.stream_url();
    if check_signature(&state, headers, &stream_url, &[]).is_err() {
        let public_form = format!("{}/twilio/media", state.config.public_url);
        check_signature(&state, headers, &public_form, &[])?;
    }
    let max = state.config.max_frame_bytes;
    Ok(upgrade.on_upgrade(max, move |socket| handle_media(state, ws::from_tws(socket))))
}

/// Drive one media socket: wait for `start`, authorize it, run the call.
/// Generic over [`Link`] so tests can drive it with channels.
pub async fn handle_media(state: AppState, mut twilio: Link) {
    let start = match wait_for_start(&state, &mut twilio).await {
        Some(s) => s,
        None => return,
    };
    let call_id = start
        .custom_parameters
        .get("call_id")
        .cloned()
        .unwrap_or_default();
    let presented = start
        .custom_parameters
        .get("token")
        .map_or("", String::as_str);
    let verdict = if call_id.is_empty() {
        Err("missing call id")
    } else {
        match token::verify_stream_token(
            &state.stream_secret,
            &call_id,
            presented,
            token::now_ms(),
            state.config.preconnect_ttl_ms,
        ) {
            Ok(()) if state.claim(&call_id) => Ok(()),
            Ok(()) => Err("call already claimed"),
            Err(token::TokenError::Expired) => Err("stream token expired"),
            Err(_) => Err("invalid stream token"),
        }
    };
    if let Err(why) = verdict {
        warn!(stream_sid = %start.stream_sid, %call_id, why, "media stream refused");
        let _ = twilio.send(WsOut::Close(CLOSE_POLICY, why.into())).await;
        return;
    }
    if !start.media_format.is_mulaw_8k_mono() {
        warn!(format = ?start.media_format, "unexpected Twilio media format");
    }
    let claimed = state.preconnected().remove(&call_id);
    // The call's record: its direction and numbers (call control, the greeting wait) and,
    // when the socket landed here without a pre-connect, its agent and task.
    let stored = match &state.store {
        Some(store) => store.get_call(&call_id).await.ok().flatten(),
        None => None,
    };
    let (model, settings): (ModelFuture, Arc<CallSettings>) = match (
        claimed,
        state.provider.clone(),
    ) {
        (Some(p), _) => (
            Box::pin(async move {
                p.model
                    .await
                    .unwrap_or_else(|_| Err("pre-connect task ended".into()))
            }),
            p.settings,
        ),
        (None, Some(provider)) => {
            // The socket landed on a node that did not answer the
            // webhook, or the pre-connect expired: connect afresh.
            let settings = match &stored {
                Some(call) => settings_for_record(&state, call),
                None => {
                    let agent = state.agents.for_number("");
                    settings_for(&state.config, &agent, None, None, None)
                }
            };
            let settings = match settings {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    warn!(%call_id, error = %e, "media stream refused: agent templates do not render");
                    let _ = twilio
                        .send(WsOut::Close(CLOSE_POLICY, "agent template error".into()))
                        .await;
                    return;
                }
            };
            state.active_calls.fetch_add(1, Ordering::Relaxed);
            (provider.open_media_session(settings.clone()), settings)
        }
        (None, None) => {
            let _ = twilio
                .send(WsOut::Close(CLOSE_POLICY, "model not configured".into()))
                .await;
            return;
        }
    };
    let ctx = call_context(&state, &call_id, &start, stored.as_ref());
    let summary = session::run(
        call_id.clone(),
        start,
        twilio,
        model,
        settings,
        state.hub.clone(),
        ctx,
    )
    .await;
    state
        .live
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&call_id);
    state.active_calls.fetch_sub(1, Ordering::Relaxed);
    info!(%call_id, reason = ?summary.end_reason, frames_in = summary.frames_in,
          frames_out = summary.frames_out, barge_ins = summary.barge_ins, "call finished");
}

/// The call control and signals of a Media Streams call (`stored`: its record, if any).
fn call_context(
    state: &AppState,
    call_id: &str,
    start: &Start,
    stored: Option<&voxbridge_store::CallRecord>,
) -> session::CallContext {
    let outbound = stored.is_some_and(|c| c.direction == "outbound");
    let peer_number = stored.map(|c| {
        if outbound {
            c.to_number.clone()
        } else {
            c.from_number.clone()
        }
    });
    let control: Option<Arc<dyn session::CallControl>> = state.twilio.clone().map(|client| {
        let caller_id = state
            .config
            .twilio_phone_number
            .clone()
            .or_else(|| stored.map(|c| c.from_number.clone()));
        crate::control::TwilioControl::new(
            client,
            start.call_sid.clone(),
            caller_id,
            call_id.to_owned(),
        ) as Arc<dyn session::CallControl>
    });
    // Answering-machine verdicts exist for outbound calls only.
    let signals = outbound.then(|| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        state
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(call_id.to_owned(), tx);
        rx
    });
    let wait = state.config.outbound_greeting_wait_ms;
    session::CallContext {
        control,
        signals,
        http: Some(state.http.clone()),
        greeting_wait: (outbound && wait > 0).then(|| Duration::from_millis(wait)),
        peer_number,
        transport: session::Transport::MediaStreams,
    }
}

/// Read frames until `start`. Media before start has no stream to belong
/// to and is dropped; a socket that never sends start is closed (1008).
async fn wait_for_start(state: &AppState, twilio: &mut Link) -> Option<Start> {
    let deadline = tokio::time::sleep(Duration::from_millis(state.config.start_timeout_ms));
    tokio::pin!(deadline);
    let mut early = 0u64;
    loop {
        tokio::select! {
            m = twilio.next() => match m {
                Some(WsIn::Text(t)) => match media::parse(t.as_str()) {
                    Ok(Inbound::Start(s)) => return Some(s),
                    Ok(Inbound::Stop) => return None,
                    Ok(Inbound::Media(_)) => {
                        early += 1;
                        if early == 1 {
                            warn!("media before start dropped");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "unparseable frame before start ignored"),
                },
                Some(WsIn::Binary(len)) => warn!(len, "binary frame before start ignored"),
                Some(WsIn::Close(_)) | None => return None,
                Some(WsIn::Error(e)) => {
                    warn!(error = %e, "media socket failed before start");
                    let code = if e.contains("too long") || e.contains("Space limit") {
                        ws::CLOSE_TOO_BIG
                    } else {
                        CLOSE_POLICY
                    };
                    let _ = twilio.send(WsOut::Close(code, "bad frame".into())).await;
                    return None;
                }
            },
            () = &mut deadline => {
                warn!("media socket sent no start in time; closing");
                let _ = twilio.send(WsOut::Close(CLOSE_POLICY, "no start message".into())).await;
                return None;
            }
        }
    }
}

/// The form fields and the URL Twilio signed, after checking the signature.
fn signed_form(
    state: &App,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, ApiError> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let url = format!(
        "{}{}",
        state.config.public_url,
        uri.path_and_query().map_or("", |p| p.as_str())
    );
    check_signature(state, headers, &url, &params)?;
    Ok(params)
}

/// A parameter of the request's query string.
pub(crate) fn query_value(uri: &axum::http::Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn form_value<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// The stored call a Twilio callback is about: `?call_id=` or its CallSid.
async fn callback_call(
    state: &App,
    uri: &axum::http::Uri,
    params: &[(String, String)],
) -> Result<voxbridge_store::CallRecord, ApiError> {
    let store = state.store()?;
    let by_id = query_value(uri, "call_id");
    let found = match (by_id, form_value(params, "CallSid")) {
        (Some(id), _) => store.get_call(&id).await?,
        (None, Some(sid)) => store.call_by_twilio_sid(sid).await?,
        (None, None) => None,
    };
    found.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "CALL_NOT_FOUND", "unknown call"))
}

/// `POST /twilio/status`: call progress (and asynchronous AMD) callbacks.
async fn twilio_status(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let params = signed_form(&state, &uri, &headers, &body)?;
    let call = callback_call(&state, &uri, &params).await?;
    let store = state.store()?;
    let now = token::now_ms() as i64;
    if let Some(answered_by) = form_value(&params, "AnsweredBy") {
        store.set_answered_by(&call.id, answered_by).await?;
        // Tell the live session (the greeting waits for this; a machine gets voicemail).
        if let Some(tx) = state
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&call.id)
        {
            let _ = tx.send(session::Signal::AnsweredBy(answered_by.to_owned()));
        }
        state.hub.publish(
            &call.id,
            CallEventKind::Status {
                status: format!("answered_by:{answered_by}"),
            },
        );
    }
    if let Some(status) = form_value(&params, "CallStatus") {
        const KNOWN: &[&str] = &[
            "queued",
            "initiated",
            "ringing",
            "in-progress",
            "completed",
            "busy",
            "no-answer",
            "failed",
            "canceled",
        ];
        if !KNOWN.contains(&status) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_STATUS",
                format!("unknown CallStatus {status:?}"),
            ));
        }
        if call.twilio_call_sid.is_none()
            && let Some(sid) = form_value(&params, "CallSid")
        {
            store.set_twilio_sid(&call.id, sid).await?;
        }
        store.update_status(&call.id, status, now).await?;
        state.hub.publish(
            &call.id,
            CallEventKind::Status {
                status: status.to_owned(),
            },
        );
        if voxbridge_store::is_terminal_status(status) {
            let duration = form_value(&params, "CallDuration").and_then(|d| d.parse().ok());
            let reason = (status != "completed").then_some(status);
            store.finish_call(&call.id, reason, now, duration).await?;
            // A campaign call: record the outcome and schedule the contact.
            crate::campaign::worker::call_ended(&state, &call.id).await?;
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /twilio/recording`: the recording of a call is ready.
async fn twilio_recording(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let params = signed_form(&state, &uri, &headers, &body)?;
    let call = callback_call(&state, &uri, &params).await?;
    if form_value(&params, "RecordingStatus").is_some_and(|s| s != "completed") {
        return Ok(StatusCode::NO_CONTENT);
    }
    let (Some(sid), Some(url)) = (
        form_value(&params, "RecordingSid"),
        form_value(&params, "RecordingUrl"),
    ) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_CALLBACK",
            "RecordingSid and RecordingUrl are required",
        ));
    };
    let duration = form_value(&params, "RecordingDuration").and_then(|d| d.parse().ok());
    state
        .store()?
        .set_recording(&call.id, sid, url, duration)
        .await?;
    state.hub.publish(
        &call.id,
        CallEventKind::Recording {
            sid: sid.to_owned(),
            url: url.to_owned(),
        },
    );
    Ok(StatusCode::NO_CONTENT)
}
