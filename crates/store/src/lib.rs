//! voxbridge's store: calls, transcript items, call events, tool calls, usage and API keys.
//!
//! One [`Store`] serves two backends, chosen by the database URL:
//!
//! - SQLite (`sqlite://path/to/file.db`, `sqlite::memory:`), the default for one node: WAL,
//!   `synchronous = NORMAL`, a 5 s busy timeout and foreign keys on;
//! - PostgreSQL (`postgres://…`), for several nodes sharing one database.
//!
//! Queries are checked at run time (`sqlx::query` + `bind`), and the same SQL text serves both
//! backends wherever the dialects agree (`$1` placeholders work on SQLite too); where they do
//! not, the code branches. Every timestamp is an `i64` of Unix milliseconds and every JSON
//! column is TEXT written and read with serde_json, on both backends. Each write is a single
//! statement or a short transaction that is safe when several tasks (or nodes) write at once.
//!
//! The same test suite (`tests/store.rs`) runs against both backends; see `scripts/pg.sh` for a
//! local PostgreSQL.

use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use subtle::ConstantTimeEq;

/// Embedded migrations, one directory per dialect.
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Statuses after which a call's `status` no longer changes (history is still appended).
pub const TERMINAL_STATUSES: [&str; 5] = ["completed", "busy", "no-answer", "failed", "canceled"];

/// Whether `status` is one of [`TERMINAL_STATUSES`].
pub fn is_terminal_status(status: &str) -> bool {
    TERMINAL_STATUSES.contains(&status)
}

/// Prefix of every API key secret.
pub const API_KEY_PREFIX: &str = "vbk_";
/// How many leading characters of a secret are stored (and shown) as its prefix.
pub const API_KEY_DISPLAY_LEN: usize = 12;
/// `last_used_at_ms` is written at most this often per key.
const LAST_USED_GRANULARITY_MS: i64 = 60_000;
/// `list_calls` clamps its limit to `1..=MAX_PAGE_SIZE`.
pub const MAX_PAGE_SIZE: u32 = 200;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("invalid cursor")]
    InvalidCursor,
    /// A value the schema does not accept (e.g. a direction other than inbound/outbound).
    #[error("invalid input: {0}")]
    Invalid(String),
}

/// Current time in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// A call to be created.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCall {
    /// uuid v7 string, assigned by the caller.
    pub id: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    pub from_number: String,
    pub to_number: String,
    pub agent: String,
    pub task: Option<serde_json::Value>,
    /// Initial status; also the first entry of the status history.
    pub status: String,
    pub api_key_id: Option<String>,
    pub idempotency_key: Option<String>,
    /// Twilio's CallSid when it is known at creation (an inbound call's webhook). Written
    /// in the same insert, so a repeated webhook for the same CallSid is a `Conflict`
    /// instead of a second row.
    pub twilio_call_sid: Option<String>,
    pub created_at_ms: i64,
}

/// One entry of a call's status history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: String,
    pub at_ms: i64,
}

/// A stored call.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallRecord {
    pub id: String,
    pub direction: String,
    pub from_number: String,
    pub to_number: String,
    pub agent: String,
    pub task: Option<serde_json::Value>,
    pub status: String,
    pub status_history: Vec<StatusChange>,
    pub twilio_call_sid: Option<String>,
    pub stream_sid: Option<String>,
    pub answered_by: Option<String>,
    pub end_reason: Option<String>,
    pub created_at_ms: i64,
    pub answered_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub duration_s: Option<i64>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cached_tokens: i64,
    pub recording_sid: Option<String>,
    pub recording_url: Option<String>,
    pub recording_duration_s: Option<i64>,
    pub api_key_id: Option<String>,
    pub idempotency_key: Option<String>,
}

/// Filters for [`Store::list_calls`]; `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFilter {
    pub status: Option<String>,
    pub direction: Option<String>,
    /// Matches `from_number` or `to_number` exactly.
    pub number: Option<String>,
    /// `created_at_ms >= created_after_ms`.
    pub created_after_ms: Option<i64>,
    /// `created_at_ms < created_before_ms`.
    pub created_before_ms: Option<i64>,
}

/// One page of [`Store::list_calls`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallPage {
    pub calls: Vec<CallRecord>,
    /// Pass back to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// One transcript line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct TranscriptItem {
    pub seq: i64,
    pub speaker: String,
    pub text: String,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub at_ms: i64,
}

/// One call event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventRecord {
    pub kind: String,
    pub data: serde_json::Value,
    pub at_ms: i64,
}

/// A tool call to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToolCall {
    pub name: String,
    pub arguments: String,
    pub result: String,
    pub ok: bool,
    pub duration_ms: i64,
    pub at_ms: i64,
}

/// A stored tool call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ToolCallRecord {
    pub id: i64,
    pub name: String,
    pub arguments: String,
    pub result: String,
    pub ok: bool,
    pub duration_ms: i64,
    pub at_ms: i64,
}

/// One answer recorded by the agent's `record_survey_response` tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct SurveyResponse {
    pub question: String,
    pub answer: String,
    pub at_ms: i64,
}

/// A stored API key (never the secret, never its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    /// First [`API_KEY_DISPLAY_LEN`] characters of the secret, for display.
    pub prefix: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
    pub last_used_at_ms: Option<i64>,
}

// ---------------------------------------------------------------------------------------------
// Row types and SQL fragments
// ---------------------------------------------------------------------------------------------

/// The columns of a [`CallRecord`], in a `macro_rules!` so that every SQL string stays a
/// `&'static str` (built with `concat!`).
macro_rules! call_cols {
    () => {
        "id, direction, from_number, to_number, agent, task, status, status_history, \
         twilio_call_sid, stream_sid, answered_by, end_reason, created_at_ms, answered_at_ms, \
         ended_at_ms, duration_s, input_tokens, output_tokens, cached_tokens, recording_sid, \
         recording_url, recording_duration_s, api_key_id, idempotency_key"
    };
}

/// `IN (…)` list of the terminal statuses (keep in sync with [`TERMINAL_STATUSES`]).
macro_rules! terminal_in {
    () => {
        "('completed', 'busy', 'no-answer', 'failed', 'canceled')"
    };
}

/// The raw row of `calls`; JSON columns still text.
#[derive(sqlx::FromRow)]
struct CallRow {
    id: String,
    direction: String,
    from_number: String,
    to_number: String,
    agent: String,
    task: Option<String>,
    status: String,
    status_history: String,
    twilio_call_sid: Option<String>,
    stream_sid: Option<String>,
    answered_by: Option<String>,
    end_reason: Option<String>,
    created_at_ms: i64,
    answered_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    duration_s: Option<i64>,
    input_tokens: i64,
    output_tokens: i64,
    cached_tokens: i64,
    recording_sid: Option<String>,
    recording_url: Option<String>,
    recording_duration_s: Option<i64>,
    api_key_id: Option<String>,
    idempotency_key: Option<String>,
}

impl TryFrom<CallRow> for CallRecord {
    type Error = StoreError;

    fn try_from(r: CallRow) -> Result<Self, StoreError> {
        let task = match r.task.as_deref() {
            None => None,
            Some(t) => Some(serde_json::from_str(t).map_err(|e| decode_err("task", e))?),
        };
        let status_history =
            serde_json::from_str(&r.status_history).map_err(|e| decode_err("status_history", e))?;
        Ok(CallRecord {
            id: r.id,
            direction: r.direction,
            from_number: r.from_number,
            to_number: r.to_number,
            agent: r.agent,
            task,
            status: r.status,
            status_history,
            twilio_call_sid: r.twilio_call_sid,
            stream_sid: r.stream_sid,
            answered_by: r.answered_by,
            end_reason: r.end_reason,
            created_at_ms: r.created_at_ms,
            answered_at_ms: r.answered_at_ms,
            ended_at_ms: r.ended_at_ms,
            duration_s: r.duration_s,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cached_tokens: r.cached_tokens,
            recording_sid: r.recording_sid,
            recording_url: r.recording_url,
            recording_duration_s: r.recording_duration_s,
            api_key_id: r.api_key_id,
            idempotency_key: r.idempotency_key,
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    kind: String,
    data: String,
    at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: String,
    name: String,
    prefix: String,
    hash: String,
    created_at_ms: i64,
    revoked_at_ms: Option<i64>,
    last_used_at_ms: Option<i64>,
}

impl ApiKeyRow {
    fn into_record(self) -> ApiKeyRecord {
        ApiKeyRecord {
            id: self.id,
            name: self.name,
            prefix: self.prefix,
            created_at_ms: self.created_at_ms,
            revoked_at_ms: self.revoked_at_ms,
            last_used_at_ms: self.last_used_at_ms,
        }
    }
}

fn decode_err(column: &str, e: serde_json::Error) -> StoreError {
    StoreError::Database(sqlx::Error::ColumnDecode {
        index: column.to_owned(),
        source: Box::new(e),
    })
}

fn to_json_text<T: Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Invalid(format!("unserializable JSON: {e}")))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

fn is_foreign_key_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_foreign_key_violation())
}

/// Maps a foreign-key violation (unknown call id) to `NotFound`.
fn fk_not_found(e: sqlx::Error) -> StoreError {
    if is_foreign_key_violation(&e) {
        StoreError::NotFound
    } else {
        StoreError::Database(e)
    }
}

const ADD_USAGE: &str = "UPDATE calls SET input_tokens = input_tokens + $2, \
     output_tokens = output_tokens + $3, cached_tokens = cached_tokens + $4 WHERE id = $1";
// The UPDATE comes first in a transcript's transaction, so it takes the write lock (SQLite)
// or the row lock (PostgreSQL) before anything is read: concurrent writers queue up.
const BUMP_TRANSCRIPT_SEQ: &str =
    "UPDATE calls SET transcript_seq = transcript_seq + 1 WHERE id = $1 RETURNING transcript_seq";
const INSERT_TRANSCRIPT: &str = "INSERT INTO transcript_items \
     (call_id, seq, speaker, text, start_ms, end_ms, at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)";
const INSERT_EVENT: &str =
    "INSERT INTO call_events (call_id, kind, data, at_ms) VALUES ($1, $2, $3, $4)";

/// Who said a transcript line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Caller,
    Agent,
}

impl Speaker {
    pub fn as_str(self) -> &'static str {
        match self {
            Speaker::Caller => "caller",
            Speaker::Agent => "agent",
        }
    }
}

/// One write of [`Store::write_batch`]: the events a call produces all the time.
#[derive(Debug, Clone, PartialEq)]
pub enum BatchWrite<'a> {
    /// As [`Store::add_transcript`].
    Transcript {
        call_id: &'a str,
        speaker: Speaker,
        text: &'a str,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        at_ms: i64,
    },
    /// As [`Store::add_usage`].
    Usage {
        call_id: &'a str,
        input: i64,
        output: i64,
        cached: i64,
    },
    /// As [`Store::add_event`], the data already JSON text.
    Event {
        call_id: &'a str,
        kind: String,
        data: String,
        at_ms: i64,
    },
}

fn require_one(rows_affected: u64) -> Result<(), StoreError> {
    if rows_affected == 0 {
        Err(StoreError::NotFound)
    } else {
        Ok(())
    }
}

fn hash_secret(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut out = String::with_capacity(64);
    for b in digest {
        use std::fmt::Write as _;
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn encode_cursor(created_at_ms: i64, id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{created_at_ms}:{id}"))
}

fn decode_cursor(cursor: &str) -> Result<(i64, String), StoreError> {
    let raw = URL_SAFE_NO_PAD
        .decode(cursor.trim_end_matches('=').as_bytes())
        .map_err(|_| StoreError::InvalidCursor)?;
    let text = String::from_utf8(raw).map_err(|_| StoreError::InvalidCursor)?;
    let (ts, id) = text.split_once(':').ok_or(StoreError::InvalidCursor)?;
    let ts: i64 = ts.parse().map_err(|_| StoreError::InvalidCursor)?;
    if id.is_empty() {
        return Err(StoreError::InvalidCursor);
    }
    Ok((ts, id.to_owned()))
}

// ---------------------------------------------------------------------------------------------
// Store
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the backend's pool; the body is type-checked once per
/// backend, so the same query code serves both.
macro_rules! with_pool {
    ($self:expr, $p:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

mod campaigns;
pub use campaigns::{
    AttemptRecord, CampaignCounts, CampaignRecord, ContactFilter, ContactLogEntry, ContactNext,
    ContactRecord, DialTicket, DispatchChoice, DispatchInput, DispatchLimits, DncEntry,
    FinishInput, HISTORY_WINDOW_MS, HistoryEntry, NewCampaign, NewContact, OPEN_CONTACT_STATES,
    call_task, is_final_contact_state,
};

/// The store; cheap to clone (the pools are reference-counted).
#[derive(Debug, Clone)]
pub struct Store {
    pool: Pool,
}

impl Store {
    /// Connects to `url` (`sqlite://…`, `sqlite::memory:`, `postgres://…`, `postgresql://…`)
    /// and runs the migrations.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let store = Self::connect_without_migrating(url).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Connects without running migrations.
    pub async fn connect_without_migrating(url: &str) -> Result<Store, StoreError> {
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| StoreError::InvalidUrl(format!("{url}: {e}")))?
                .create_if_missing(true)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5))
                .foreign_keys(true);
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            let pool = if in_memory {
                // An in-memory database lives as long as a connection to it: keep exactly one,
                // forever (a shared-cache database with several connections would also bring
                // table-level SQLITE_LOCKED errors that busy_timeout does not cover).
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_with(opts)
                    .await?
            } else {
                // No ping before each use: a connection to a local file does not hang up,
                // and the ping is one more round trip to SQLite's worker thread (a
                // context switch each way) for every statement.
                SqlitePoolOptions::new()
                    .max_connections(8)
                    .test_before_acquire(false)
                    .connect_with(opts.journal_mode(SqliteJournalMode::Wal))
                    .await?
            };
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(10)
                .connect(url)
                .await
                .map_err(|e| match e {
                    sqlx::Error::Configuration(c) => {
                        StoreError::InvalidUrl(format!("{}: {c}", redact_url(url)))
                    }
                    e => StoreError::Database(e),
                })?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::InvalidUrl(format!(
                "{}: expected sqlite:… or postgres://…",
                redact_url(url)
            )));
        };
        Ok(Store { pool })
    }

    /// Runs the embedded migrations (idempotent; on PostgreSQL sqlx holds an advisory lock, so
    /// several nodes may start at once).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        match &self.pool {
            Pool::Sqlite(p) => SQLITE_MIGRATOR.run(p).await?,
            Pool::Postgres(p) => PG_MIGRATOR.run(p).await?,
        }
        Ok(())
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// The SQLite pool, when that is the backend (for code that adds its own tables).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.pool {
            Pool::Sqlite(p) => Some(p),
            Pool::Postgres(_) => None,
        }
    }

    /// The PostgreSQL pool, when that is the backend (e.g. for LISTEN/NOTIFY).
    pub fn pg_pool(&self) -> Option<&PgPool> {
        match &self.pool {
            Pool::Sqlite(_) => None,
            Pool::Postgres(p) => Some(p),
        }
    }

    /// Closes the pool, waiting for connections to be returned.
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }

    // -- calls ----------------------------------------------------------------------------

    /// Creates a call; its status history starts with `new.status` at `new.created_at_ms`.
    /// `Conflict` when the id, or the pair (api_key_id, idempotency_key), is already used.
    pub async fn create_call(&self, new: &NewCall) -> Result<CallRecord, StoreError> {
        if new.direction != "inbound" && new.direction != "outbound" {
            return Err(StoreError::Invalid(format!(
                "direction must be inbound or outbound, not {:?}",
                new.direction
            )));
        }
        let task = new.task.as_ref().map(to_json_text).transpose()?;
        let history = to_json_text(&[StatusChange {
            status: new.status.clone(),
            at_ms: new.created_at_ms,
        }])?;
        const SQL: &str = concat!(
            "INSERT INTO calls (id, direction, from_number, to_number, agent, task, status, \
             status_history, api_key_id, idempotency_key, twilio_call_sid, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING ",
            call_cols!()
        );
        let res = with_pool!(self, p => sqlx::query_as::<_, CallRow>(SQL)
            .bind(&new.id)
            .bind(&new.direction)
            .bind(&new.from_number)
            .bind(&new.to_number)
            .bind(&new.agent)
            .bind(&task)
            .bind(&new.status)
            .bind(&history)
            .bind(&new.api_key_id)
            .bind(&new.idempotency_key)
            .bind(&new.twilio_call_sid)
            .bind(new.created_at_ms)
            .fetch_one(p)
            .await);
        match res {
            Ok(row) => row.try_into(),
            Err(e) if is_unique_violation(&e) => {
                // SQLite names the column, PostgreSQL the constraint: both contain these.
                let msg = e.to_string();
                if msg.contains("idempotency") {
                    Err(StoreError::Conflict(
                        "idempotency key already used for this API key".into(),
                    ))
                } else if msg.contains("twilio_call_sid") {
                    Err(StoreError::Conflict(format!(
                        "Twilio call sid {} belongs to another call",
                        new.twilio_call_sid.as_deref().unwrap_or_default()
                    )))
                } else {
                    Err(StoreError::Conflict(format!(
                        "call {} already exists",
                        new.id
                    )))
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The call created with this (API key, idempotency key), if any.
    pub async fn call_by_idempotency_key(
        &self,
        api_key_id: &str,
        key: &str,
    ) -> Result<Option<CallRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            call_cols!(),
            " FROM calls WHERE api_key_id = $1 AND idempotency_key = $2"
        );
        let row = with_pool!(self, p => sqlx::query_as::<_, CallRow>(SQL)
            .bind(api_key_id)
            .bind(key)
            .fetch_optional(p)
            .await)?;
        row.map(CallRecord::try_from).transpose()
    }

    /// The call with this id, if any.
    pub async fn get_call(&self, id: &str) -> Result<Option<CallRecord>, StoreError> {
        const SQL: &str = concat!("SELECT ", call_cols!(), " FROM calls WHERE id = $1");
        let row = with_pool!(self, p => sqlx::query_as::<_, CallRow>(SQL)
            .bind(id)
            .fetch_optional(p)
            .await)?;
        row.map(CallRecord::try_from).transpose()
    }

    /// The call with this Twilio CallSid, if any.
    pub async fn call_by_twilio_sid(&self, sid: &str) -> Result<Option<CallRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            call_cols!(),
            " FROM calls WHERE twilio_call_sid = $1"
        );
        let row = with_pool!(self, p => sqlx::query_as::<_, CallRow>(SQL)
            .bind(sid)
            .fetch_optional(p)
            .await)?;
        row.map(CallRecord::try_from).transpose()
    }

    /// Sets the Twilio CallSid. `NotFound` for an unknown call; `Conflict` when another call
    /// already has this sid.
    pub async fn set_twilio_sid(&self, id: &str, call_sid: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE calls SET twilio_call_sid = $2 WHERE id = $1";
        let res = with_pool!(self, p => sqlx::query(SQL)
            .bind(id)
            .bind(call_sid)
            .execute(p)
            .await
            .map(|r| r.rows_affected()));
        match res {
            Ok(n) => require_one(n),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "Twilio call sid {call_sid} belongs to another call"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Sets the Media Streams StreamSid. `NotFound` for an unknown call.
    pub async fn set_stream_sid(&self, id: &str, stream_sid: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE calls SET stream_sid = $2 WHERE id = $1";
        let n = with_pool!(self, p => sqlx::query(SQL)
            .bind(id)
            .bind(stream_sid)
            .execute(p)
            .await?
            .rows_affected());
        require_one(n)
    }

    /// Appends `(status, at_ms)` to the status history and sets the status, unless the call is
    /// already in a terminal status ([`TERMINAL_STATUSES`]): then only the history grows and
    /// the status stays. The first `in-progress` (on a non-terminal call) sets
    /// `answered_at_ms`. One atomic UPDATE; returns the resulting record.
    pub async fn update_status(
        &self,
        id: &str,
        status: &str,
        at_ms: i64,
    ) -> Result<CallRecord, StoreError> {
        const SQLITE: &str = concat!(
            "UPDATE calls SET \
             status_history = json_insert(status_history, '$[#]', \
                 json_object('status', $2, 'at_ms', $3)), \
             status = CASE WHEN status IN ",
            terminal_in!(),
            " THEN status ELSE $2 END, \
             answered_at_ms = CASE WHEN $2 = 'in-progress' AND answered_at_ms IS NULL \
                 AND status NOT IN ",
            terminal_in!(),
            " THEN $3 ELSE answered_at_ms END \
             WHERE id = $1 RETURNING ",
            call_cols!()
        );
        const PG: &str = concat!(
            "UPDATE calls SET \
             status_history = (status_history::jsonb || jsonb_build_array(\
                 jsonb_build_object('status', $2::text, 'at_ms', $3::bigint)))::text, \
             status = CASE WHEN status IN ",
            terminal_in!(),
            " THEN status ELSE $2 END, \
             answered_at_ms = CASE WHEN $2 = 'in-progress' AND answered_at_ms IS NULL \
                 AND status NOT IN ",
            terminal_in!(),
            " THEN $3 ELSE answered_at_ms END \
             WHERE id = $1 RETURNING ",
            call_cols!()
        );
        let row = match &self.pool {
            Pool::Sqlite(p) => {
                sqlx::query_as::<_, CallRow>(SQLITE)
                    .bind(id)
                    .bind(status)
                    .bind(at_ms)
                    .fetch_optional(p)
                    .await?
            }
            Pool::Postgres(p) => {
                sqlx::query_as::<_, CallRow>(PG)
                    .bind(id)
                    .bind(status)
                    .bind(at_ms)
                    .fetch_optional(p)
                    .await?
            }
        };
        row.ok_or(StoreError::NotFound)?.try_into()
    }

    /// Sets Twilio's answering-machine verdict (`human`, `machine_start`, …).
    pub async fn set_answered_by(&self, id: &str, answered_by: &str) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE calls SET answered_by = $2 WHERE id = $1";
        let n = with_pool!(self, p => sqlx::query(SQL)
            .bind(id)
            .bind(answered_by)
            .execute(p)
            .await?
            .rows_affected());
        require_one(n)
    }

    /// Records the end of the call. The first `end_reason` and the first `ended_at_ms` win (the
    /// session usually ends before Twilio's status callback arrives); `duration_s`, when
    /// given, overwrites (Twilio's `CallDuration` is the authoritative one).
    pub async fn finish_call(
        &self,
        id: &str,
        end_reason: Option<&str>,
        ended_at_ms: i64,
        duration_s: Option<i64>,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE calls SET end_reason = COALESCE(end_reason, $2), \
             ended_at_ms = COALESCE(ended_at_ms, $3), \
             duration_s = COALESCE($4, duration_s) WHERE id = $1";
        let n = with_pool!(self, p => sqlx::query(SQL)
            .bind(id)
            .bind(end_reason)
            .bind(ended_at_ms)
            .bind(duration_s)
            .execute(p)
            .await?
            .rows_affected());
        require_one(n)
    }

    /// Adds token usage to the call's totals.
    pub async fn add_usage(
        &self,
        id: &str,
        input: i64,
        output: i64,
        cached: i64,
    ) -> Result<(), StoreError> {
        let n = with_pool!(self, p => sqlx::query(ADD_USAGE)
            .bind(id)
            .bind(input)
            .bind(output)
            .bind(cached)
            .execute(p)
            .await?
            .rows_affected());
        require_one(n)
    }

    /// Sets the recording (Twilio RecordingSid, media URL, duration).
    pub async fn set_recording(
        &self,
        id: &str,
        sid: &str,
        url: &str,
        duration_s: Option<i64>,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE calls SET recording_sid = $2, recording_url = $3, \
             recording_duration_s = $4 WHERE id = $1";
        let n = with_pool!(self, p => sqlx::query(SQL)
            .bind(id)
            .bind(sid)
            .bind(url)
            .bind(duration_s)
            .execute(p)
            .await?
            .rows_affected());
        require_one(n)
    }

    /// Calls matching `filter`, newest first (`created_at_ms DESC, id DESC`), `limit` (clamped
    /// to `1..=200`) at a time. `cursor` is the `next_cursor` of the previous page (opaque:
    /// base64url of `created_at_ms:id`); a malformed one gives `InvalidCursor`.
    pub async fn list_calls(
        &self,
        filter: &CallFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<CallPage, StoreError> {
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let (cur_ts, cur_id) = match cursor {
            Some(c) => {
                let (ts, id) = decode_cursor(c)?;
                (Some(ts), Some(id))
            }
            None => (None, None),
        };
        const SQL: &str = concat!(
            "SELECT ",
            call_cols!(),
            " FROM calls WHERE ($1 IS NULL OR status = $1) \
             AND ($2 IS NULL OR direction = $2) \
             AND ($3 IS NULL OR from_number = $3 OR to_number = $3) \
             AND ($4 IS NULL OR created_at_ms >= $4) \
             AND ($5 IS NULL OR created_at_ms < $5) \
             AND ($6 IS NULL OR created_at_ms < $6 OR (created_at_ms = $6 AND id < $7)) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $8"
        );
        let rows = with_pool!(self, p => sqlx::query_as::<_, CallRow>(SQL)
            .bind(&filter.status)
            .bind(&filter.direction)
            .bind(&filter.number)
            .bind(filter.created_after_ms)
            .bind(filter.created_before_ms)
            .bind(cur_ts)
            .bind(&cur_id)
            .bind(i64::from(limit) + 1)
            .fetch_all(p)
            .await)?;
        let mut calls = rows
            .into_iter()
            .map(CallRecord::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next_cursor = if calls.len() > limit as usize {
            calls.truncate(limit as usize);
            calls.last().map(|c| encode_cursor(c.created_at_ms, &c.id))
        } else {
            None
        };
        Ok(CallPage { calls, next_cursor })
    }

    // -- transcript, events, tool calls ----------------------------------------------------

    /// Appends a transcript line; `seq` is the call's next number (1, 2, …), handed out by a
    /// counter on the call row, so concurrent writers get distinct, gap-free numbers.
    /// `NotFound` for an unknown call; `Invalid` for a speaker other than caller/agent.
    pub async fn add_transcript(
        &self,
        call_id: &str,
        speaker: &str,
        text: &str,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let speaker = match speaker {
            "caller" => Speaker::Caller,
            "agent" => Speaker::Agent,
            other => {
                return Err(StoreError::Invalid(format!(
                    "speaker must be caller or agent, not {other:?}"
                )));
            }
        };
        self.write_batch(&[BatchWrite::Transcript {
            call_id,
            speaker,
            text,
            start_ms,
            end_ms,
            at_ms,
        }])
        .await
    }

    /// The call's transcript, by `seq`.
    pub async fn transcript(&self, call_id: &str) -> Result<Vec<TranscriptItem>, StoreError> {
        const SQL: &str = "SELECT seq, speaker, text, start_ms, end_ms, at_ms \
             FROM transcript_items WHERE call_id = $1 ORDER BY seq";
        let items = with_pool!(self, p => sqlx::query_as::<_, TranscriptItem>(SQL)
            .bind(call_id)
            .fetch_all(p)
            .await)?;
        Ok(items)
    }

    /// Appends a call event. `NotFound` for an unknown call.
    pub async fn add_event(
        &self,
        call_id: &str,
        kind: &str,
        data: &serde_json::Value,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        let data = to_json_text(data)?;
        with_pool!(self, p => sqlx::query(INSERT_EVENT)
            .bind(call_id)
            .bind(kind)
            .bind(&data)
            .bind(at_ms)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(fk_not_found)?;
        Ok(())
    }

    /// Writes the call writer's common events in one transaction (one commit instead of
    /// one per event). All or nothing: on an error (`NotFound` for a call the store has no
    /// row for) nothing is written, and the caller can write the events one by one.
    pub async fn write_batch(&self, writes: &[BatchWrite<'_>]) -> Result<(), StoreError> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            for w in writes {
                match w {
                    BatchWrite::Transcript { call_id, speaker, text, start_ms, end_ms, at_ms } => {
                        let seq: Option<i64> = sqlx::query_scalar(BUMP_TRANSCRIPT_SEQ)
                            .bind(call_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let Some(seq) = seq else {
                            return Err(StoreError::NotFound);
                        };
                        sqlx::query(INSERT_TRANSCRIPT)
                            .bind(call_id)
                            .bind(seq)
                            .bind(speaker.as_str())
                            .bind(text)
                            .bind(start_ms)
                            .bind(end_ms)
                            .bind(at_ms)
                            .execute(&mut *tx)
                            .await?;
                    }
                    BatchWrite::Usage { call_id, input, output, cached } => {
                        let n = sqlx::query(ADD_USAGE)
                            .bind(call_id)
                            .bind(input)
                            .bind(output)
                            .bind(cached)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                        require_one(n)?;
                    }
                    BatchWrite::Event { call_id, kind, data, at_ms } => {
                        sqlx::query(INSERT_EVENT)
                            .bind(call_id)
                            .bind(kind)
                            .bind(data)
                            .bind(at_ms)
                            .execute(&mut *tx)
                            .await
                            .map_err(fk_not_found)?;
                    }
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The call's events, in insertion order.
    pub async fn events(&self, call_id: &str) -> Result<Vec<EventRecord>, StoreError> {
        const SQL: &str =
            "SELECT kind, data, at_ms FROM call_events WHERE call_id = $1 ORDER BY id";
        let rows = with_pool!(self, p => sqlx::query_as::<_, EventRow>(SQL)
            .bind(call_id)
            .fetch_all(p)
            .await)?;
        rows.into_iter()
            .map(|r| {
                Ok(EventRecord {
                    data: serde_json::from_str(&r.data).map_err(|e| decode_err("data", e))?,
                    kind: r.kind,
                    at_ms: r.at_ms,
                })
            })
            .collect()
    }

    /// Stores a tool call. `NotFound` for an unknown call.
    pub async fn add_tool_call(&self, call_id: &str, t: &NewToolCall) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO tool_calls \
             (call_id, name, arguments, result, ok, duration_ms, at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)";
        with_pool!(self, p => sqlx::query(SQL)
            .bind(call_id)
            .bind(&t.name)
            .bind(&t.arguments)
            .bind(&t.result)
            .bind(t.ok)
            .bind(t.duration_ms)
            .bind(t.at_ms)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(fk_not_found)?;
        Ok(())
    }

    /// The call's tool calls, in insertion order.
    pub async fn tool_calls(&self, call_id: &str) -> Result<Vec<ToolCallRecord>, StoreError> {
        const SQL: &str = "SELECT id, name, arguments, result, ok, duration_ms, at_ms \
             FROM tool_calls WHERE call_id = $1 ORDER BY id";
        let rows = with_pool!(self, p => sqlx::query_as::<_, ToolCallRecord>(SQL)
            .bind(call_id)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }

    /// Stores one survey answer of a call. `NotFound` for an unknown call.
    pub async fn add_survey_response(
        &self,
        call_id: &str,
        question: &str,
        answer: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "INSERT INTO survey_responses (call_id, question, answer, at_ms) \
             VALUES ($1, $2, $3, $4)";
        with_pool!(self, p => sqlx::query(SQL)
            .bind(call_id)
            .bind(question)
            .bind(answer)
            .bind(at_ms)
            .execute(p)
            .await
            .map(|_| ()))
        .map_err(fk_not_found)
    }

    /// A call's survey answers, in the order they were given.
    pub async fn survey_responses(&self, call_id: &str) -> Result<Vec<SurveyResponse>, StoreError> {
        const SQL: &str = "SELECT question, answer, at_ms FROM survey_responses \
             WHERE call_id = $1 ORDER BY id";
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, SurveyResponse>(SQL)
            .bind(call_id)
            .fetch_all(p)
            .await)?,
        )
    }

    // -- API keys -------------------------------------------------------------------------

    /// Creates an API key. Returns the record and the secret (`vbk_` + base64url of 32 random
    /// bytes), which is shown once: only its SHA-256 is stored.
    pub async fn create_api_key(&self, name: &str) -> Result<(ApiKeyRecord, String), StoreError> {
        let bytes: [u8; 32] = rand::random();
        let secret = format!("{API_KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
        let rec = ApiKeyRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: name.to_owned(),
            prefix: secret[..API_KEY_DISPLAY_LEN].to_owned(),
            created_at_ms: now_ms(),
            revoked_at_ms: None,
            last_used_at_ms: None,
        };
        const SQL: &str = "INSERT INTO api_keys (id, name, prefix, hash, created_at_ms) \
             VALUES ($1, $2, $3, $4, $5)";
        let hash = hash_secret(&secret);
        with_pool!(self, p => sqlx::query(SQL)
            .bind(&rec.id)
            .bind(&rec.name)
            .bind(&rec.prefix)
            .bind(&hash)
            .bind(rec.created_at_ms)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok((rec, secret))
    }

    /// The key this secret belongs to; `None` when it is unknown or revoked. Updates
    /// `last_used_at_ms` at most once a minute per key.
    pub async fn verify_api_key(&self, secret: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        // Real secrets are 47 characters; anything far longer is not one of ours.
        if !secret.starts_with(API_KEY_PREFIX) || secret.len() > 256 {
            return Ok(None);
        }
        let hash = hash_secret(secret);
        const SQL: &str = "SELECT id, name, prefix, hash, created_at_ms, revoked_at_ms, \
             last_used_at_ms FROM api_keys WHERE hash = $1";
        let row = with_pool!(self, p => sqlx::query_as::<_, ApiKeyRow>(SQL)
            .bind(&hash)
            .fetch_optional(p)
            .await)?;
        let Some(row) = row else { return Ok(None) };
        // The lookup is by the digest already; compare it again in constant time anyway.
        if !bool::from(row.hash.as_bytes().ct_eq(hash.as_bytes())) || row.revoked_at_ms.is_some() {
            return Ok(None);
        }
        let mut rec = row.into_record();
        let now = now_ms();
        if rec
            .last_used_at_ms
            .is_none_or(|t| now - t >= LAST_USED_GRANULARITY_MS)
        {
            const TOUCH: &str = "UPDATE api_keys SET last_used_at_ms = $2 WHERE id = $1 \
                 AND (last_used_at_ms IS NULL OR last_used_at_ms <= $3)";
            let n = with_pool!(self, p => sqlx::query(TOUCH)
                .bind(&rec.id)
                .bind(now)
                .bind(now - LAST_USED_GRANULARITY_MS)
                .execute(p)
                .await?
                .rows_affected());
            if n > 0 {
                rec.last_used_at_ms = Some(now);
            }
        }
        Ok(Some(rec))
    }

    /// All keys (revoked ones too), oldest first.
    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>, StoreError> {
        const SQL: &str = "SELECT id, name, prefix, created_at_ms, revoked_at_ms, \
             last_used_at_ms FROM api_keys ORDER BY created_at_ms, id";
        let rows = with_pool!(self, p => sqlx::query_as::<_, ApiKeyRecord>(SQL)
            .fetch_all(p)
            .await)?;
        Ok(rows)
    }

    /// Revokes the key whose id or display prefix is `id_or_prefix`. `Ok(true)` when a key
    /// was revoked now, `Ok(false)` when none matches or it was already revoked, `Conflict`
    /// when a prefix matches several keys.
    pub async fn revoke_api_key(&self, id_or_prefix: &str) -> Result<bool, StoreError> {
        const FIND: &str = "SELECT id FROM api_keys WHERE id = $1 OR prefix = $1";
        let ids: Vec<String> = with_pool!(self, p => sqlx::query_scalar(FIND)
            .bind(id_or_prefix)
            .fetch_all(p)
            .await)?;
        let id = match ids.as_slice() {
            [] => return Ok(false),
            [id] => id,
            _ => {
                // An exact id wins over prefixes.
                match ids.iter().find(|i| i.as_str() == id_or_prefix) {
                    Some(id) => id,
                    None => {
                        return Err(StoreError::Conflict(format!(
                            "{id_or_prefix} matches {} keys; use the key id",
                            ids.len()
                        )));
                    }
                }
            }
        };
        const REVOKE: &str = "UPDATE api_keys SET revoked_at_ms = $2 \
             WHERE id = $1 AND revoked_at_ms IS NULL";
        let n = with_pool!(self, p => sqlx::query(REVOKE)
            .bind(id)
            .bind(now_ms())
            .execute(p)
            .await?
            .rows_affected());
        Ok(n > 0)
    }
}

/// The URL with any password replaced by `***`, for error messages.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}{tail}")
            } else {
                format!("{scheme}://{userinfo}@{host}{tail}")
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_rejects_garbage() {
        let c = encode_cursor(1_700_000_000_123, "0190-abc");
        assert_eq!(
            decode_cursor(&c).ok(),
            Some((1_700_000_000_123, "0190-abc".to_owned()))
        );
        for bad in ["", "!!!", "bm9jb2xvbg", "eDox", "MTI6"] {
            // "bm9jb2xvbg" = "nocolon", "eDox" = "x:1", "MTI6" = "12:"
            assert!(
                matches!(decode_cursor(bad), Err(StoreError::InvalidCursor)),
                "{bad}"
            );
        }
    }

    #[test]
    fn secret_hash_is_hex_sha256() {
        assert_eq!(
            hash_secret("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("mysql://h/db"), "mysql://h/db");
    }

    #[tokio::test]
    async fn rejects_unknown_url_scheme() {
        assert!(matches!(
            Store::connect("mysql://x/y").await,
            Err(StoreError::InvalidUrl(_))
        ));
    }

    #[tokio::test]
    async fn in_memory_sqlite_works() -> Result<(), StoreError> {
        let store = Store::connect("sqlite::memory:").await?;
        assert_eq!(store.backend(), "sqlite");
        assert!(store.get_call("nope").await?.is_none());
        Ok(())
    }
}
