//! The REST API under `/v1`: place and inspect calls. JSON in and out,
//! `Authorization: Bearer <api key>`, errors as `{"error": …, "code": …}`.

use crate::agents::Task;
use crate::app::{ApiError, AppState};
use crate::hub::CallEventKind;
use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::time::Duration;
use tracing::{info, warn};
use utoipa::{IntoParams, OpenApi, ToSchema};
use voxbridge_store::{ApiKeyRecord, CallFilter, CallRecord, NewCall, StoreError};
use voxbridge_twilio::rest::{CreateCall, TwilioError};

// --- errors and extractors --------------------------------------------------

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "not found"),
            StoreError::InvalidCursor => ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_CURSOR",
                "the pagination cursor is not valid",
            ),
            StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "CONFLICT", m),
            other => {
                warn!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "STORE_ERROR",
                    "the database failed; nothing was changed",
                )
            }
        }
    }
}

/// A JSON body, with our error shape for every way it can be wrong.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "expected Content-Type: application/json",
            ));
        }
        let bytes =
            axum::body::Bytes::from_request(req, state)
                .await
                .map_err(|e: BytesRejection| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "PAYLOAD_TOO_LARGE",
                            "request body too large",
                        )
                    } else {
                        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_BODY", e.body_text())
                    }
                })?;
        serde_json::from_slice(&bytes).map(ApiJson).map_err(|e| {
            let code = if e.is_syntax() || e.is_eof() {
                "INVALID_JSON"
            } else {
                "INVALID_REQUEST"
            };
            ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
        })
    }
}

/// Query parameters, with our error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(q)| ApiQuery(q))
            .map_err(|e: QueryRejection| {
                ApiError::new(StatusCode::BAD_REQUEST, "INVALID_QUERY", e.body_text())
            })
    }
}

/// The API key of the request (authenticated and within its rate limit).
pub struct Caller(pub ApiKeyRecord);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Browsers cannot set headers on a WebSocket: allow ?api_key=.
        let secret = bearer(&parts.headers)
            .or_else(|| crate::app::query_value(&parts.uri, "api_key"))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHORIZED",
                    "missing Authorization: Bearer <api key>",
                )
            })?;
        let store = state.store()?;
        let key = store.verify_api_key(&secret).await?.ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "INVALID_API_KEY",
                "unknown or revoked API key",
            )
        })?;
        if state.limiter.check_key(&key.id).is_err() {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMITED",
                format!(
                    "more than {} requests per minute for this API key",
                    state.config.rate_limit_per_minute
                ),
            ));
        }
        Ok(Caller(key))
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

// --- views --------------------------------------------------------------

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// A call as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CallView {
    pub id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub from: String,
    pub to: String,
    pub agent: String,
    #[schema(value_type = Option<Object>)]
    pub task: Option<serde_json::Value>,
    /// queued, initiated, ringing, in-progress, completed, busy, no-answer, failed, canceled.
    pub status: String,
    pub status_history: Vec<StatusView>,
    pub twilio_call_sid: Option<String>,
    pub answered_by: Option<String>,
    pub end_reason: Option<String>,
    pub created_at: String,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_s: Option<i64>,
    pub usage: UsageView,
    pub recording_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusView {
    pub status: String,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// A subset of `input_tokens`.
    pub cached_tokens: i64,
}

impl From<&CallRecord> for CallView {
    fn from(c: &CallRecord) -> Self {
        CallView {
            id: c.id.clone(),
            direction: c.direction.clone(),
            from: c.from_number.clone(),
            to: c.to_number.clone(),
            agent: c.agent.clone(),
            task: c.task.clone(),
            status: c.status.clone(),
            status_history: c
                .status_history
                .iter()
                .map(|s| StatusView {
                    status: s.status.clone(),
                    at: iso(s.at_ms),
                })
                .collect(),
            twilio_call_sid: c.twilio_call_sid.clone(),
            answered_by: c.answered_by.clone(),
            end_reason: c.end_reason.clone(),
            created_at: iso(c.created_at_ms),
            answered_at: c.answered_at_ms.map(iso),
            ended_at: c.ended_at_ms.map(iso),
            duration_s: c.duration_s,
            usage: UsageView {
                input_tokens: c.input_tokens,
                output_tokens: c.output_tokens,
                cached_tokens: c.cached_tokens,
            },
            recording_url: c.recording_url.clone(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TranscriptLine {
    /// `caller` or `agent`.
    pub speaker: String,
    pub text: String,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    #[serde(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallDetail {
    #[serde(flatten)]
    pub call: CallView,
    pub transcript: Vec<TranscriptLine>,
    pub events: Vec<EventView>,
    /// Tools the agent called, with arguments, result and duration.
    pub tool_calls: Vec<ToolCallView>,
    /// Answers recorded with `record_survey_response`.
    pub survey: Vec<SurveyAnswerView>,
}

/// One tool call of a call.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolCallView {
    pub name: String,
    /// The arguments as the model sent them (JSON text).
    pub arguments: String,
    /// What the model got back (JSON text).
    pub result: String,
    pub ok: bool,
    pub duration_ms: i64,
    pub at: String,
}

/// One survey answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SurveyAnswerView {
    pub question: String,
    pub answer: String,
    pub at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallList {
    pub calls: Vec<CallView>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CallCreated {
    pub id: String,
    pub status: String,
}

/// `POST /v1/calls` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCallRequest {
    /// E.164 number to call.
    pub to: String,
    /// Caller id; defaults to TWILIO_PHONE_NUMBER.
    #[serde(default)]
    pub from: Option<String>,
    /// Agent name; defaults to `default`.
    #[serde(default)]
    pub agent: Option<String>,
    #[serde(default)]
    pub task: Option<Task>,
    #[serde(default)]
    pub voice: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Filter by status.
    pub status: Option<String>,
    /// `inbound` or `outbound`.
    pub direction: Option<String>,
    /// Calls from or to this number (E.164).
    pub number: Option<String>,
    /// Created at or after this instant (RFC 3339).
    pub created_after: Option<String>,
    /// Created before this instant (RFC 3339).
    pub created_before: Option<String>,
    pub cursor: Option<String>,
    /// 1..=200, default 50.
    pub limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TranscriptParams {
    /// `json` (default) or `txt`.
    pub format: Option<String>,
}

// --- handlers ---------------------------------------------------------------

/// Parse an E.164 number with a real phone-number library.
pub fn parse_e164(raw: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_PHONE",
            format!("{raw:?} is not a valid E.164 phone number"),
        )
    };
    if !raw.starts_with('+') {
        return Err(invalid());
    }
    let n = phonenumber::parse(None, raw).map_err(|_| invalid())?;
    if !phonenumber::is_valid(&n) {
        return Err(invalid());
    }
    Ok(n.format().mode(phonenumber::Mode::E164).to_string())
}

/// Place an outbound call.
#[utoipa::path(post, path = "/v1/calls", request_body = CreateCallRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "same key, same call: no second dial")),
    responses((status = 201, body = CallCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
               (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 502, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_call(
    State(state): State<AppState>,
    Caller(key): Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateCallRequest>,
) -> Result<Response, ApiError> {
    let store = state.store()?;
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(k) = &idem {
        if k.is_empty() || k.len() > 255 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_IDEMPOTENCY_KEY",
                "Idempotency-Key must be 1 to 255 characters",
            ));
        }
        if let Some(existing) = store.call_by_idempotency_key(&key.id, k).await? {
            return Ok(created(&existing, true));
        }
    }
    let to = parse_e164(&req.to)?;
    let agent_name = req.agent.clone().unwrap_or_else(|| "default".into());
    let Some(agent) = state.agents.get(&agent_name) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "UNKNOWN_AGENT",
            format!(
                "no agent named {agent_name:?}; known: {}",
                state.agents.names().join(", ")
            ),
        ));
    };
    // The agent's templates must render for this task before we dial.
    if let Err(e) = crate::agents::check_task(&agent, req.task.as_ref()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_TASK",
            e.to_string(),
        ));
    }
    if let Some(v) = &req.voice
        && !voxbridge_realtime::session::VOICES.contains(&v.as_str())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_VOICE",
            format!(
                "{v:?} is not a Realtime voice; one of {}",
                voxbridge_realtime::session::VOICES.join(", ")
            ),
        ));
    }
    let from = match req
        .from
        .as_deref()
        .or(state.config.twilio_phone_number.as_deref())
    {
        Some(f) => parse_e164(f).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "INVALID_FROM",
                format!("{f:?} is not a valid E.164 caller id"),
            )
        })?,
        None => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "MISSING_FROM",
                "no `from` given and TWILIO_PHONE_NUMBER is not set",
            ));
        }
    };
    let Some(twilio) = state.twilio.clone() else {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "TWILIO_NOT_CONFIGURED",
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or an API key) must be set to place calls",
        ));
    };
    if state.config.openai_api_key.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "MODEL_NOT_CONFIGURED",
            "OPENAI_API_KEY is not set",
        ));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let task = serde_json::json!({
        "task": req.task,
        "voice": req.voice,
        "model": req.model,
    });
    let new = NewCall {
        id: id.clone(),
        direction: "outbound".into(),
        from_number: from.clone(),
        to_number: to.clone(),
        agent: agent.name.clone(),
        task: Some(task),
        status: "queued".into(),
        api_key_id: Some(key.id.clone()),
        idempotency_key: idem.clone(),
        twilio_call_sid: None,
        created_at_ms: crate::token::now_ms() as i64,
    };
    let record = match store.create_call(&new).await {
        Ok(r) => r,
        Err(StoreError::Conflict(_)) => {
            // The same Idempotency-Key raced us: answer with that call.
            if let Some(k) = &idem
                && let Some(existing) = store.call_by_idempotency_key(&key.id, k).await?
            {
                return Ok(created(&existing, true));
            }
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "CONFLICT",
                "a call with this Idempotency-Key exists",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let request = outbound_request(&state.config, &id, &to, &from);
    match twilio.create_call(&request).await {
        Ok(resource) => {
            store.set_twilio_sid(&id, &resource.sid).await?;
            info!(call_id = %id, call_sid = %resource.sid, %to, "outbound call created");
            let record = store.get_call(&id).await?.unwrap_or(record);
            Ok(created(&record, false))
        }
        Err(e) => {
            let now = crate::token::now_ms() as i64;
            let _ = store.update_status(&id, "failed", now).await;
            let _ = store
                .finish_call(&id, Some(&format!("twilio_error: {e}")), now, None)
                .await;
            Err(twilio_error(e))
        }
    }
}

/// The Twilio create-call request of one of our outbound calls: the voice webhook and the
/// status, AMD and recording callbacks all carry `?call_id=`, so every callback finds its call
/// even before we know Twilio's CallSid.
pub fn outbound_request(cfg: &crate::config::Config, id: &str, to: &str, from: &str) -> CreateCall {
    let base = &cfg.public_url;
    let machine = (cfg.machine_detection != "none").then(|| cfg.machine_detection.clone());
    CreateCall {
        to: to.to_owned(),
        from: from.to_owned(),
        url: Some(format!("{base}/twilio/voice?call_id={id}")),
        twiml: None,
        method: Some("POST".into()),
        status_callback: Some(format!("{base}/twilio/status?call_id={id}")),
        status_callback_events: ["initiated", "ringing", "answered", "completed"]
            .map(String::from)
            .to_vec(),
        status_callback_method: Some("POST".into()),
        timeout_s: Some(cfg.ring_timeout_s),
        time_limit_s: Some(cfg.max_call_duration_s),
        async_amd: machine.as_ref().map(|_| true),
        async_amd_status_callback: machine
            .as_ref()
            .map(|_| format!("{base}/twilio/status?call_id={id}")),
        machine_detection: machine,
        record: cfg.record_calls,
        recording_channels: cfg.record_calls.then(|| "dual".into()),
        recording_status_callback: cfg
            .record_calls
            .then(|| format!("{base}/twilio/recording?call_id={id}")),
        recording_status_callback_events: Vec::new(),
    }
}

fn created(c: &CallRecord, replayed: bool) -> Response {
    let mut resp = (
        StatusCode::CREATED,
        Json(CallCreated {
            id: c.id.clone(),
            status: c.status.clone(),
        }),
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// Map a Twilio failure to our status and code.
pub fn twilio_error(e: TwilioError) -> ApiError {
    let code = e.code();
    let status = match code {
        "INVALID_PHONE" | "INVALID_FROM" | "DESTINATION_NOT_ALLOWED" | "INVALID_REQUEST" => {
            StatusCode::BAD_REQUEST
        }
        "TWILIO_RATE_LIMITED" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(status, code, format!("Twilio: {e}"))
}

/// List calls, newest first.
#[utoipa::path(get, path = "/v1/calls", params(ListParams),
    responses((status = 200, body = CallList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_calls(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<CallList>, ApiError> {
    let store = state.store()?;
    let when = |v: &Option<String>, name: &str| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|s| {
                s.parse::<jiff::Timestamp>()
                    .map(|t| t.as_millisecond())
                    .map_err(|_| {
                        ApiError::new(
                            StatusCode::BAD_REQUEST,
                            "INVALID_QUERY",
                            format!("{name} must be an RFC 3339 timestamp"),
                        )
                    })
            })
            .transpose()
    };
    let filter = CallFilter {
        status: p.status.clone(),
        direction: p.direction.clone(),
        number: p.number.as_deref().map(parse_e164).transpose()?,
        created_after_ms: when(&p.created_after, "created_after")?,
        created_before_ms: when(&p.created_before, "created_before")?,
    };
    let limit = p.limit.unwrap_or(50);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            "limit must be 1..=200",
        ));
    }
    let page = store
        .list_calls(&filter, p.cursor.as_deref(), limit)
        .await?;
    Ok(Json(CallList {
        calls: page.calls.iter().map(CallView::from).collect(),
        next_cursor: page.next_cursor,
    }))
}

async fn find_call(state: &AppState, id: &str) -> Result<CallRecord, ApiError> {
    state.store()?.get_call(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "CALL_NOT_FOUND",
            format!("no call {id:?}"),
        )
    })
}

/// One call with its transcript and events.
#[utoipa::path(get, path = "/v1/calls/{id}", params(("id" = String, Path)),
    responses((status = 200, body = CallDetail), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_call(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CallDetail>, ApiError> {
    let call = find_call(&state, &id).await?;
    let store = state.store()?;
    let transcript = store.transcript(&id).await?;
    let events = store.events(&id).await?;
    let tool_calls = store.tool_calls(&id).await?;
    let survey = store.survey_responses(&id).await?;
    Ok(Json(CallDetail {
        tool_calls: tool_calls
            .into_iter()
            .map(|t| ToolCallView {
                name: t.name,
                arguments: t.arguments,
                result: t.result,
                ok: t.ok,
                duration_ms: t.duration_ms,
                at: iso(t.at_ms),
            })
            .collect(),
        survey: survey
            .into_iter()
            .map(|a| SurveyAnswerView {
                question: a.question,
                answer: a.answer,
                at: iso(a.at_ms),
            })
            .collect(),
        call: CallView::from(&call),
        transcript: transcript
            .into_iter()
            .map(|t| TranscriptLine {
                speaker: t.speaker,
                text: t.text,
                at: iso(t.at_ms),
            })
            .collect(),
        events: events
            .into_iter()
            .map(|e| EventView {
                kind: e.kind,
                data: e.data,
                at: iso(e.at_ms),
            })
            .collect(),
    }))
}

/// The transcript as JSON lines or plain text.
#[utoipa::path(get, path = "/v1/calls/{id}/transcript", params(("id" = String, Path), TranscriptParams),
    responses((status = 200, body = [TranscriptLine]), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_transcript(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
    ApiQuery(p): ApiQuery<TranscriptParams>,
) -> Result<Response, ApiError> {
    find_call(&state, &id).await?;
    let items = state.store()?.transcript(&id).await?;
    match p.format.as_deref().unwrap_or("json") {
        "json" => Ok(Json(
            items
                .into_iter()
                .map(|t| TranscriptLine {
                    speaker: t.speaker,
                    text: t.text,
                    at: iso(t.at_ms),
                })
                .collect::<Vec<_>>(),
        )
        .into_response()),
        "txt" => {
            let mut text = String::new();
            for t in items {
                let who = if t.speaker == "agent" {
                    "Agent"
                } else {
                    "Caller"
                };
                text.push_str(&format!("[{}] {who}: {}\n", iso(t.at_ms), t.text));
            }
            Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
        }
        other => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY",
            format!("format {other:?}: use json or txt"),
        )),
    }
}

/// Hang up a call in progress.
#[utoipa::path(post, path = "/v1/calls/{id}/hangup", params(("id" = String, Path)),
    responses((status = 202, body = CallCreated), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn hangup_call(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let call = find_call(&state, &id).await?;
    if voxbridge_store::is_terminal_status(&call.status) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CALL_NOT_ACTIVE",
            format!("the call is already {}", call.status),
        ));
    }
    let (Some(sid), Some(twilio)) = (call.twilio_call_sid.clone(), state.twilio.clone()) else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CALL_NOT_ACTIVE",
            "the call has no Twilio leg to hang up",
        ));
    };
    twilio.hangup(&sid).await.map_err(twilio_error)?;
    state.hub.publish(
        &id,
        CallEventKind::Warning {
            message: "hangup requested through the API".into(),
        },
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(CallCreated {
            id,
            status: "hangup_requested".into(),
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct EventsParams {
    /// Only this call's events.
    pub call_id: Option<String>,
    /// The API key, for clients that cannot set headers on a WebSocket.
    pub api_key: Option<String>,
}

/// Live call events (WebSocket; one JSON object per message).
#[utoipa::path(get, path = "/v1/events", params(EventsParams),
    responses((status = 101, description = "WebSocket of call events"), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    _caller: Caller,
    Query(p): Query<EventsParams>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let rx = state.hub.subscribe();
    upgrade.on_upgrade(move |socket| stream_events(socket, rx, p.call_id))
}

async fn stream_events(
    mut socket: WebSocket,
    mut rx: tokio::sync::broadcast::Receiver<crate::hub::CallEvent>,
    call_id: Option<String>,
) {
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) => {
                    if call_id.as_ref().is_some_and(|c| *c != ev.call_id) {
                        continue;
                    }
                    let text = serde_json::to_string(&ev).unwrap_or_default();
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = serde_json::json!({"type": "lagged", "skipped": n}).to_string();
                    if socket.send(Message::Text(note.into())).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            m = socket.recv() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
            () = tokio::time::sleep(Duration::from_secs(30)) => {
                if socket.send(Message::Ping(Vec::new().into())).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The error body of every endpoint.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// Human-readable text.
    pub error: String,
    /// Machine code, e.g. `INVALID_PHONE`.
    pub code: String,
}

/// The OpenAPI document, generated from the handlers above.
#[derive(OpenApi)]
#[openapi(
    info(title = "voxbridge", description = "AI phone calls: Twilio <-> OpenAI Realtime"),
    paths(create_call, list_calls, get_call, get_transcript, hangup_call, events,
          crate::campaign::api::create_campaign, crate::campaign::api::list_campaigns,
          crate::campaign::api::get_campaign, crate::campaign::api::add_contacts,
          crate::campaign::api::list_contacts, crate::campaign::api::get_contact,
          crate::campaign::api::pause, crate::campaign::api::resume,
          crate::campaign::api::cancel, crate::campaign::api::list_dnc,
          crate::campaign::api::add_dnc, crate::campaign::api::remove_dnc),
    components(schemas(CreateCallRequest, Task, CallCreated, CallView, CallDetail, CallList,
                       StatusView, UsageView, TranscriptLine, EventView, ErrorBody,
                       ToolCallView, SurveyAnswerView,
                       crate::campaign::api::CreateCampaignRequest,
                       crate::campaign::api::CampaignView, crate::campaign::api::CountsView,
                       crate::campaign::api::CampaignCreated,
                       crate::campaign::api::AddContactsRequest,
                       crate::campaign::api::ContactView, crate::campaign::api::ContactDetail,
                       crate::campaign::api::DncRequest, crate::campaign::api::DncView,
                       crate::campaign::import::ContactInput,
                       crate::campaign::import::ImportReport,
                       crate::campaign::import::RowError)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /v1/openapi.json`.
pub async fn openapi() -> impl IntoResponse {
    Json(ApiDoc::openapi())
}
