//! REST: `/v1/campaigns` (create from JSON or CSV, status with counts and ETA, contacts,
//! pause/resume/cancel) and `/v1/dnc` (the do-not-call list).

use axum::Json;
use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use voxbridge_compliance::Policy;
use voxbridge_store::{
    AttemptRecord, CampaignCounts, CampaignRecord, ContactFilter, ContactLogEntry, ContactRecord,
    DncEntry, NewCampaign, StoreError,
};

use super::import::{self, ContactInput, ImportReport, ImportRules};
use crate::agents::Task;
use crate::api::{ApiJson, ApiQuery, Caller, ErrorBody, parse_e164};
use crate::app::{ApiError, AppState};
use crate::token::now_ms;

fn now() -> i64 {
    now_ms() as i64
}

fn iso(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn bad(code: &'static str, msg: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, msg)
}

/// `POST /v1/campaigns`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateCampaignRequest {
    pub name: String,
    /// Agent name (default `default`).
    #[serde(default)]
    pub agent: Option<String>,
    /// What the agent does on each call; each contact's name and columns are added to its
    /// context.
    #[serde(default)]
    pub task: Option<Task>,
    /// Caller id (default TWILIO_PHONE_NUMBER).
    #[serde(default)]
    pub from: Option<String>,
    /// Calling rules; every field optional (see the README's campaign section).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub policy: Option<serde_json::Value>,
    /// Calls of this campaign live at once (default 5).
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// Pacing, calls started per minute (default 30; 0 = no pacing).
    #[serde(default)]
    pub calls_per_minute: Option<u32>,
    /// Pause the campaign when this share of recent calls failed (default 0.5; 0 = never).
    #[serde(default)]
    pub failure_threshold: Option<f64>,
    /// Contacts as JSON…
    #[serde(default)]
    pub contacts: Vec<ContactInput>,
    /// …and/or as CSV text (a header row, then one contact per row).
    #[serde(default)]
    pub csv: Option<String>,
}

/// A campaign as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignView {
    pub id: String,
    pub name: String,
    pub agent: String,
    #[schema(value_type = Object)]
    pub task: Option<serde_json::Value>,
    pub from: String,
    #[schema(value_type = Object)]
    pub policy: serde_json::Value,
    /// `active`, `paused`, `canceled`, `completed`.
    pub status: String,
    /// Why it is in that status (e.g. the circuit breaker's verdict).
    pub status_reason: Option<String>,
    pub max_concurrent: i64,
    pub calls_per_minute: i64,
    pub failure_threshold: f64,
    pub created_at: String,
    pub counts: CountsView,
    /// When the last contact should be done at the current pace (null unless active).
    pub eta: Option<String>,
    /// When the next contact is due.
    pub next_due_at: Option<String>,
}

/// Contacts by state.
#[derive(Debug, Serialize, ToSchema)]
pub struct CountsView {
    pub total: i64,
    pub pending: i64,
    pub deferred: i64,
    pub dialing: i64,
    pub in_call: i64,
    pub completed: i64,
    pub failed: i64,
    pub opted_out: i64,
    pub refused: i64,
    pub canceled: i64,
}

impl From<&CampaignCounts> for CountsView {
    fn from(c: &CampaignCounts) -> Self {
        CountsView {
            total: c.total,
            pending: c.pending,
            deferred: c.deferred,
            dialing: c.dialing,
            in_call: c.in_call,
            completed: c.completed,
            failed: c.failed,
            opted_out: c.opted_out,
            refused: c.refused,
            canceled: c.canceled,
        }
    }
}

/// ETA: the remaining contacts at the slower of the pacing and the concurrency limit (with
/// the campaign's average call length so far, 60 s before any), from the next due instant.
pub fn eta_ms(c: &CampaignRecord, counts: &CampaignCounts, now_ms: i64) -> Option<i64> {
    if c.status != "active" {
        return None;
    }
    let remaining = counts.pending + counts.deferred + counts.dialing + counts.in_call;
    if remaining == 0 {
        return None;
    }
    let avg_s = counts.avg_call_s.unwrap_or(60.0).max(1.0);
    let by_concurrency = c.max_concurrent.max(1) as f64 * 60.0 / avg_s;
    let per_minute = if c.calls_per_minute > 0 {
        by_concurrency.min(c.calls_per_minute as f64)
    } else {
        by_concurrency
    };
    let start = counts.next_due_at_ms.unwrap_or(now_ms).max(now_ms);
    Some(start + (remaining as f64 / per_minute * 60_000.0) as i64)
}

fn view(c: &CampaignRecord, counts: &CampaignCounts) -> CampaignView {
    CampaignView {
        id: c.id.clone(),
        name: c.name.clone(),
        agent: c.agent.clone(),
        task: c.task.clone(),
        from: c.from_number.clone(),
        policy: c.policy.clone(),
        status: c.status.clone(),
        status_reason: c.status_reason.clone(),
        max_concurrent: c.max_concurrent,
        calls_per_minute: c.calls_per_minute,
        failure_threshold: c.failure_threshold,
        created_at: iso(c.created_at_ms),
        counts: counts.into(),
        eta: eta_ms(c, counts, now()).map(iso),
        next_due_at: counts.next_due_at_ms.map(iso),
    }
}

/// `201` of `POST /v1/campaigns`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CampaignCreated {
    pub campaign: CampaignView,
    pub import: ImportReport,
}

/// Parses and checks a policy, naming the field at fault.
pub fn parse_policy(v: Option<&serde_json::Value>) -> Result<Policy, ApiError> {
    let policy: Policy = match v {
        None => Policy::default(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| bad("INVALID_POLICY", format!("policy: {e}")))?,
    };
    policy
        .validate()
        .map_err(|e| bad("INVALID_POLICY", format!("policy: {e}")))?;
    Ok(policy)
}

fn import_error(e: import::ImportError) -> ApiError {
    let code = match e {
        import::ImportError::TooManyRows => "TOO_MANY_CONTACTS",
        _ => "INVALID_CSV",
    };
    bad(code, e.to_string())
}

/// Create a campaign (its contacts as JSON and/or CSV); bad rows are reported, good rows kept.
#[utoipa::path(post, path = "/v1/campaigns", request_body = CreateCampaignRequest,
    responses((status = 201, body = CampaignCreated), (status = 400, body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create_campaign(
    State(state): State<AppState>,
    Caller(key): Caller,
    ApiJson(req): ApiJson<CreateCampaignRequest>,
) -> Result<Response, ApiError> {
    let store = state.store()?;
    if state.twilio.is_none() {
        // Accepting a campaign that can never dial would fail silently.
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "TWILIO_NOT_CONFIGURED",
            "TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or an API key) must be set to run campaigns",
        ));
    }
    let name = req.name.trim();
    if name.is_empty() || name.len() > 200 {
        return Err(bad("INVALID_NAME", "name must be 1 to 200 characters"));
    }
    let agent_name = req.agent.clone().unwrap_or_else(|| "default".into());
    let Some(agent) = state.agents.get(&agent_name) else {
        return Err(bad(
            "UNKNOWN_AGENT",
            format!(
                "no agent named {agent_name:?}; known: {}",
                state.agents.names().join(", ")
            ),
        ));
    };
    let policy = parse_policy(req.policy.as_ref())?;
    let max_concurrent = req.max_concurrent.unwrap_or(5);
    if !(1..=1000).contains(&max_concurrent) {
        return Err(bad("INVALID_LIMIT", "max_concurrent must be 1 to 1000"));
    }
    let calls_per_minute = req.calls_per_minute.unwrap_or(30);
    if calls_per_minute > 6000 {
        return Err(bad("INVALID_LIMIT", "calls_per_minute must be 0 to 6000"));
    }
    let failure_threshold = req.failure_threshold.unwrap_or(0.5);
    if !(0.0..=1.0).contains(&failure_threshold) {
        return Err(bad(
            "INVALID_LIMIT",
            "failure_threshold must be between 0 and 1",
        ));
    }
    let from = match req
        .from
        .as_deref()
        .or(state.config.twilio_phone_number.as_deref())
    {
        Some(f) => parse_e164(f).map_err(|_| {
            bad(
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
    let existing = Default::default();
    let rules = ImportRules {
        require_consent: policy.require_consent,
        existing: &existing,
    };
    let (mut contacts, mut report) =
        import::from_json(&req.contacts, &rules).map_err(import_error)?;
    if let Some(csv) = &req.csv {
        let seen = contacts.iter().map(|c| c.phone.clone()).collect();
        let rules = ImportRules {
            require_consent: policy.require_consent,
            existing: &seen,
        };
        let (more, r) = import::from_csv(csv, &rules).map_err(import_error)?;
        contacts.extend(more);
        report.received += r.received;
        report.accepted += r.accepted;
        report.rejected += r.rejected;
        report.errors.extend(r.errors);
    }
    let new = NewCampaign {
        id: uuid::Uuid::now_v7().to_string(),
        name: name.to_owned(),
        agent: agent.name.clone(),
        task: req
            .task
            .as_ref()
            .map(|t| serde_json::to_value(t).unwrap_or_default()),
        from_number: from,
        policy: serde_json::to_value(&policy).unwrap_or_default(),
        max_concurrent: i64::from(max_concurrent),
        calls_per_minute: i64::from(calls_per_minute),
        failure_threshold,
        api_key_id: Some(key.id.clone()),
        created_at_ms: now(),
    };
    let campaign = store.create_campaign(&new, &contacts).await?;
    let counts = store.campaign_counts(&campaign.id).await?;
    tracing::info!(campaign = %campaign.id, contacts = contacts.len(), rejected = report.rejected, "campaign created");
    state.campaign_wake.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(CampaignCreated {
            campaign: view(&campaign, &counts),
            import: report,
        }),
    )
        .into_response())
}

/// Contacts to add: `text/csv`, or JSON `{"contacts": [...]}`.
pub struct ContactsBody(Body);

enum Body {
    Csv(String),
    Json(Vec<ContactInput>),
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddContactsRequest {
    pub contacts: Vec<ContactInput>,
}

impl FromRequest<AppState> for ContactsBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let ctype = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if ctype.starts_with("text/csv") {
            let bytes = axum::body::Bytes::from_request(req, state)
                .await
                .map_err(|e| {
                    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                        ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "PAYLOAD_TOO_LARGE",
                            "request body too large",
                        )
                    } else {
                        bad("INVALID_BODY", e.body_text())
                    }
                })?;
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| bad("INVALID_CSV", "the CSV is not UTF-8 text"))?;
            return Ok(ContactsBody(Body::Csv(text)));
        }
        let ApiJson(r) = ApiJson::<AddContactsRequest>::from_request(req, state).await?;
        Ok(ContactsBody(Body::Json(r.contacts)))
    }
}

/// Add contacts (CSV or JSON) to a campaign; bad rows are reported, good rows kept.
#[utoipa::path(post, path = "/v1/campaigns/{id}/contacts", request_body(content = AddContactsRequest,
        description = "JSON, or `text/csv` with a header row"),
    params(("id" = String, Path)),
    responses((status = 200, body = ImportReport), (status = 400, body = ErrorBody),
              (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_contacts(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path(id): Path<String>,
    ContactsBody(body): ContactsBody,
) -> Result<Json<ImportReport>, ApiError> {
    let store = state.store()?;
    let campaign = find(&state, &id).await?;
    if campaign.status == "canceled" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "CAMPAIGN_CANCELED",
            "contacts cannot be added to a canceled campaign",
        ));
    }
    let policy = super::rules::policy_of(&campaign.policy);
    let existing = store.campaign_phones(&id).await?;
    let rules = ImportRules {
        require_consent: policy.require_consent,
        existing: &existing,
    };
    let (contacts, report) = match &body {
        Body::Csv(text) => import::from_csv(text, &rules),
        Body::Json(rows) => import::from_json(rows, &rules),
    }
    .map_err(import_error)?;
    store.add_contacts(&id, &contacts, now()).await?;
    state.campaign_wake.notify_one();
    Ok(Json(report))
}

async fn find(state: &AppState, id: &str) -> Result<CampaignRecord, ApiError> {
    state.store()?.get_campaign(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "CAMPAIGN_NOT_FOUND",
            format!("no campaign {id}"),
        )
    })
}

/// Campaigns, newest first, with their counts.
#[utoipa::path(get, path = "/v1/campaigns",
    responses((status = 200, body = Vec<CampaignView>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_campaigns(
    State(state): State<AppState>,
    Caller(_key): Caller,
) -> Result<Json<Vec<CampaignView>>, ApiError> {
    let store = state.store()?;
    let mut out = Vec::new();
    for c in store.list_campaigns().await? {
        let counts = store.campaign_counts(&c.id).await?;
        out.push(view(&c, &counts));
    }
    Ok(Json(out))
}

/// One campaign: status, counts by state, ETA.
#[utoipa::path(get, path = "/v1/campaigns/{id}", params(("id" = String, Path)),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_campaign(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    let c = find(&state, &id).await?;
    let counts = state.store()?.campaign_counts(&id).await?;
    Ok(Json(view(&c, &counts)))
}

async fn transition(
    state: &AppState,
    id: &str,
    to: &str,
    from: &[&str],
    reason: &str,
) -> Result<Json<CampaignView>, ApiError> {
    find(state, id).await?;
    let store = state.store()?;
    let c = match store
        .set_campaign_status(id, to, Some(reason), from, now())
        .await
    {
        Ok(c) => c,
        Err(StoreError::Conflict(m)) => {
            return Err(ApiError::new(StatusCode::CONFLICT, "INVALID_TRANSITION", m));
        }
        Err(e) => return Err(e.into()),
    };
    state.campaign_wake.notify_one();
    let counts = store.campaign_counts(id).await?;
    Ok(Json(view(&c, &counts)))
}

/// Pause: no new calls start; calls in progress finish.
#[utoipa::path(post, path = "/v1/campaigns/{id}/pause", params(("id" = String, Path)),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn pause(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    transition(&state, &id, "paused", &["active"], "paused by request").await
}

/// Resume a paused campaign (also after the circuit breaker paused it).
#[utoipa::path(post, path = "/v1/campaigns/{id}/resume", params(("id" = String, Path)),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn resume(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    transition(&state, &id, "active", &["paused"], "resumed by request").await
}

/// Cancel: waiting contacts are canceled; calls in progress finish.
#[utoipa::path(post, path = "/v1/campaigns/{id}/cancel", params(("id" = String, Path)),
    responses((status = 200, body = CampaignView), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path(id): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    transition(
        &state,
        &id,
        "canceled",
        &["active", "paused"],
        "canceled by request",
    )
    .await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContactParams {
    /// Only contacts in this state.
    pub state: Option<String>,
    /// 1..1000 (default 100).
    pub limit: Option<i64>,
    pub offset: Option<i64>,
}

/// A contact as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    pub id: String,
    pub row: i64,
    pub phone: String,
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub consent: bool,
    #[schema(value_type = Object)]
    pub context: serde_json::Value,
    pub state: String,
    pub next_run_at: String,
    pub attempts: i64,
    pub last_outcome: Option<String>,
    /// Why the contact is in its state (deferral, refusal, retry, final outcome).
    pub reason_code: Option<String>,
    pub reason: Option<String>,
}

impl From<ContactRecord> for ContactView {
    fn from(c: ContactRecord) -> Self {
        ContactView {
            id: c.id,
            row: c.row_number,
            phone: c.phone,
            name: c.name,
            timezone: c.timezone,
            consent: c.consent,
            context: c.context,
            state: c.state,
            next_run_at: iso(c.next_run_at_ms),
            attempts: c.attempts,
            last_outcome: c.last_outcome,
            reason_code: c.reason_code,
            reason: c.reason,
        }
    }
}

const CONTACT_STATES: [&str; 9] = [
    "pending",
    "deferred",
    "dialing",
    "in_call",
    "completed",
    "failed",
    "opted_out",
    "refused",
    "canceled",
];

/// A campaign's contacts in import order.
#[utoipa::path(get, path = "/v1/campaigns/{id}/contacts", params(("id" = String, Path), ContactParams),
    responses((status = 200, body = Vec<ContactView>), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_contacts(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<ContactParams>,
) -> Result<Json<Vec<ContactView>>, ApiError> {
    find(&state, &id).await?;
    if let Some(s) = &q.state
        && !CONTACT_STATES.contains(&s.as_str())
    {
        return Err(bad(
            "INVALID_STATE",
            format!("state must be one of {}", CONTACT_STATES.join(", ")),
        ));
    }
    let f = ContactFilter {
        state: q.state,
        limit: q.limit.unwrap_or(100),
        offset: q.offset.unwrap_or(0),
    };
    let rows = state.store()?.list_contacts(&id, &f).await?;
    Ok(Json(rows.into_iter().map(ContactView::from).collect()))
}

/// One contact with its attempts and its log (every deferral, refusal, dial and outcome).
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactDetail {
    pub contact: ContactView,
    #[schema(value_type = Vec<Object>)]
    pub attempts: Vec<AttemptRecord>,
    #[schema(value_type = Vec<Object>)]
    pub log: Vec<ContactLogEntry>,
}

/// One contact, its attempts and its log.
#[utoipa::path(get, path = "/v1/campaigns/{id}/contacts/{contact_id}",
    params(("id" = String, Path), ("contact_id" = String, Path)),
    responses((status = 200, body = ContactDetail), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_contact(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path((id, contact_id)): Path<(String, String)>,
) -> Result<Json<ContactDetail>, ApiError> {
    let store = state.store()?;
    let contact = store
        .get_contact(&contact_id)
        .await?
        .filter(|c| c.campaign_id == id)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "CONTACT_NOT_FOUND",
                "no such contact in this campaign",
            )
        })?;
    Ok(Json(ContactDetail {
        attempts: store.contact_attempts(&contact.id).await?,
        log: store.contact_log(&contact.id).await?,
        contact: contact.into(),
    }))
}

/// `POST /v1/dnc`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DncRequest {
    pub phone: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A do-not-call entry.
#[derive(Debug, Serialize, ToSchema)]
pub struct DncView {
    pub phone: String,
    pub reason: Option<String>,
    pub source: String,
    pub added_at: String,
}

impl From<DncEntry> for DncView {
    fn from(d: DncEntry) -> Self {
        DncView {
            phone: d.phone,
            reason: d.reason,
            source: d.source,
            added_at: iso(d.added_at_ms),
        }
    }
}

/// The do-not-call list.
#[utoipa::path(get, path = "/v1/dnc",
    responses((status = 200, body = Vec<DncView>), (status = 401, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list_dnc(
    State(state): State<AppState>,
    Caller(_key): Caller,
) -> Result<Json<Vec<DncView>>, ApiError> {
    let rows = state.store()?.list_dnc().await?;
    Ok(Json(rows.into_iter().map(DncView::from).collect()))
}

/// Add a number to the do-not-call list; its waiting contacts in every campaign are closed.
#[utoipa::path(post, path = "/v1/dnc", request_body = DncRequest,
    responses((status = 201, body = DncView), (status = 200, body = DncView, description = "already listed"),
              (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn add_dnc(
    State(state): State<AppState>,
    Caller(_key): Caller,
    ApiJson(req): ApiJson<DncRequest>,
) -> Result<Response, ApiError> {
    let phone = parse_e164(req.phone.trim())?;
    let t = now();
    let added = state
        .store()?
        .add_dnc(&phone, req.reason.as_deref(), "api", t)
        .await?;
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let entry = state
        .store()?
        .list_dnc()
        .await?
        .into_iter()
        .find(|d| d.phone == phone)
        .map(DncView::from);
    Ok((status, Json(entry)).into_response())
}

/// Remove a number from the do-not-call list.
#[utoipa::path(delete, path = "/v1/dnc/{phone}", params(("phone" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove_dnc(
    State(state): State<AppState>,
    Caller(_key): Caller,
    Path(phone): Path<String>,
) -> Result<StatusCode, ApiError> {
    let phone = parse_e164(phone.trim())?;
    if state.store()?.remove_dnc(&phone).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "NOT_LISTED",
            format!("{phone} is not on the do-not-call list"),
        ))
    }
}
