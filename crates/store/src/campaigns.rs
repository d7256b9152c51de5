//! Campaigns: the durable outbound call queue.
//!
//! The `contacts` table is the queue: one row per person to call, in a state
//! (`pending`, `deferred`, `dialing`, `in_call`, then one of the final states) with the instant it
//! is next due. A dial is an `attempts` row, written as `dialing` in the same transaction that
//! takes the contact off the queue and *before* Twilio is asked to place the call; only the
//! node that wrote it dials it, once. After a crash an attempt left `dialing` is "in doubt": the
//! reconciler (server side) asks Twilio whether the call exists before anything else happens to
//! the contact, so a number is never dialed twice for one attempt.
//!
//! Claims are safe with several nodes: [`Store::dispatch`] locks the campaign row first
//! (`UPDATE … RETURNING`, which is the write lock on SQLite and a row lock on PostgreSQL) and
//! selects due contacts `FOR UPDATE SKIP LOCKED` on PostgreSQL. The store knows nothing of
//! calling rules: the caller passes a `decide` function (the compliance check) that sees the
//! contact, whether the number is on the do-not-call list, and the number's recent call history
//! across all campaigns.

use std::collections::HashSet;

use serde::Serialize;

use crate::{Pool, Store, StoreError, decode_err, is_unique_violation, require_one, to_json_text};

/// Contact states in which the contact still has work to do.
pub const OPEN_CONTACT_STATES: [&str; 4] = ["pending", "deferred", "dialing", "in_call"];

/// How far back [`Store::dispatch`] loads a number's history for the `decide` function.
pub const HISTORY_WINDOW_MS: i64 = 8 * 24 * 3600 * 1000;

/// Calls placed (or possibly placed) to a number since an instant, any campaign: the
/// history the calling rules see.
const HISTORY: &str = "SELECT started_at_ms, campaign_id, outcome FROM attempts \
     WHERE phone = $1 AND state <> 'not_placed' AND started_at_ms >= $2 \
     ORDER BY started_at_ms";

macro_rules! campaign_cols {
    () => {
        "id, name, agent, task, from_number, policy, status, status_reason, max_concurrent, \
         calls_per_minute, next_dial_at_ms, failure_threshold, api_key_id, created_at_ms, \
         updated_at_ms"
    };
}

macro_rules! contact_cols {
    () => {
        "id, campaign_id, row_number, phone, name, timezone, consent, context, state, \
         next_run_at_ms, attempts, first_attempt_at_ms, last_outcome, reason_code, reason, \
         updated_at_ms"
    };
}

macro_rules! attempt_cols {
    () => {
        "id, contact_id, campaign_id, phone, seq, call_id, state, twilio_call_sid, outcome, \
         detail, node, lease_until_ms, started_at_ms, ended_at_ms"
    };
}

/// Inserts one prepared contact (`$id`, `$c: &NewContact`, `$ctx`: its context as JSON text).
macro_rules! insert_contact {
    ($tx:ident, $id:expr, $campaign:expr, $c:expr, $ctx:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO contacts (id, campaign_id, row_number, phone, name, timezone, consent, \
             context, state, next_run_at_ms, updated_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $9)",
        )
        .bind($id)
        .bind($campaign)
        .bind($c.row_number)
        .bind(&$c.phone)
        .bind(&$c.name)
        .bind(&$c.timezone)
        .bind($c.consent)
        .bind($ctx)
        .bind($now)
        .execute(&mut *$tx)
        .await
        .map_err(|e| conflict_or(e, &format!("{} is already in this campaign", $c.phone)))?
    };
}

/// Appends a line to a contact's log inside the transaction `$tx`.
macro_rules! log_row {
    ($tx:ident, $contact:expr, $kind:expr, $code:expr, $msg:expr, $now:expr) => {
        sqlx::query(
            "INSERT INTO contact_log (contact_id, kind, code, message, at_ms) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind($contact)
        .bind($kind)
        .bind($code)
        .bind($msg)
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}

/// Marks an active campaign `completed` once none of its contacts has work left.
macro_rules! complete_if_done {
    ($tx:ident, $campaign:expr, $now:expr) => {
        sqlx::query(
            "UPDATE campaigns SET status = 'completed', status_reason = 'every contact is done', \
             updated_at_ms = $2 WHERE id = $1 AND status = 'active' AND NOT EXISTS \
             (SELECT 1 FROM contacts WHERE campaign_id = $1 AND state IN \
             ('pending', 'deferred', 'dialing', 'in_call'))",
        )
        .bind($campaign)
        .bind($now)
        .execute(&mut *$tx)
        .await?
    };
}

/// A campaign to create.
#[derive(Debug, Clone)]
pub struct NewCampaign {
    pub id: String,
    pub name: String,
    pub agent: String,
    pub task: Option<serde_json::Value>,
    pub from_number: String,
    /// The compliance policy, as JSON (the store does not interpret it).
    pub policy: serde_json::Value,
    pub max_concurrent: i64,
    pub calls_per_minute: i64,
    pub failure_threshold: f64,
    pub api_key_id: Option<String>,
    pub created_at_ms: i64,
}

/// A contact to add to a campaign (already validated).
#[derive(Debug, Clone)]
pub struct NewContact {
    /// Where the contact came from in the import (CSV line, JSON index), for reports.
    pub row_number: i64,
    pub phone: String,
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub consent: bool,
    pub context: serde_json::Value,
}

/// A stored campaign.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CampaignRecord {
    pub id: String,
    pub name: String,
    pub agent: String,
    pub task: Option<serde_json::Value>,
    pub from_number: String,
    pub policy: serde_json::Value,
    /// `active`, `paused`, `canceled`, `completed`.
    pub status: String,
    /// Why the campaign is in its status (e.g. the circuit breaker's verdict).
    pub status_reason: Option<String>,
    pub max_concurrent: i64,
    pub calls_per_minute: i64,
    pub next_dial_at_ms: i64,
    pub failure_threshold: f64,
    pub api_key_id: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct CampaignRow {
    id: String,
    name: String,
    agent: String,
    task: Option<String>,
    from_number: String,
    policy: String,
    status: String,
    status_reason: Option<String>,
    max_concurrent: i64,
    calls_per_minute: i64,
    next_dial_at_ms: i64,
    failure_threshold: f64,
    api_key_id: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
}

impl TryFrom<CampaignRow> for CampaignRecord {
    type Error = StoreError;
    fn try_from(r: CampaignRow) -> Result<Self, StoreError> {
        Ok(CampaignRecord {
            task: r
                .task
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| decode_err("task", e))?,
            policy: serde_json::from_str(&r.policy).map_err(|e| decode_err("policy", e))?,
            id: r.id,
            name: r.name,
            agent: r.agent,
            from_number: r.from_number,
            status: r.status,
            status_reason: r.status_reason,
            max_concurrent: r.max_concurrent,
            calls_per_minute: r.calls_per_minute,
            next_dial_at_ms: r.next_dial_at_ms,
            failure_threshold: r.failure_threshold,
            api_key_id: r.api_key_id,
            created_at_ms: r.created_at_ms,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

/// A stored contact (one row of the queue).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ContactRecord {
    pub id: String,
    pub campaign_id: String,
    pub row_number: i64,
    pub phone: String,
    pub name: Option<String>,
    pub timezone: Option<String>,
    pub consent: bool,
    pub context: serde_json::Value,
    pub state: String,
    pub next_run_at_ms: i64,
    /// Calls placed for this contact in this campaign.
    pub attempts: i64,
    pub first_attempt_at_ms: Option<i64>,
    pub last_outcome: Option<String>,
    pub reason_code: Option<String>,
    pub reason: Option<String>,
    pub updated_at_ms: i64,
}

#[derive(sqlx::FromRow)]
struct ContactRow {
    id: String,
    campaign_id: String,
    row_number: i64,
    phone: String,
    name: Option<String>,
    timezone: Option<String>,
    consent: bool,
    context: String,
    state: String,
    next_run_at_ms: i64,
    attempts: i64,
    first_attempt_at_ms: Option<i64>,
    last_outcome: Option<String>,
    reason_code: Option<String>,
    reason: Option<String>,
    updated_at_ms: i64,
}

impl TryFrom<ContactRow> for ContactRecord {
    type Error = StoreError;
    fn try_from(r: ContactRow) -> Result<Self, StoreError> {
        Ok(ContactRecord {
            context: serde_json::from_str(&r.context).map_err(|e| decode_err("context", e))?,
            id: r.id,
            campaign_id: r.campaign_id,
            row_number: r.row_number,
            phone: r.phone,
            name: r.name,
            timezone: r.timezone,
            consent: r.consent,
            state: r.state,
            next_run_at_ms: r.next_run_at_ms,
            attempts: r.attempts,
            first_attempt_at_ms: r.first_attempt_at_ms,
            last_outcome: r.last_outcome,
            reason_code: r.reason_code,
            reason: r.reason,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

/// One dial of a contact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct AttemptRecord {
    pub id: String,
    pub contact_id: String,
    pub campaign_id: String,
    pub phone: String,
    pub seq: i64,
    pub call_id: String,
    /// `dialing` (written before the Twilio request), `in_call` (Twilio has it), `done`,
    /// `not_placed` (Twilio never had it: proven by the reconciler or by Twilio's refusal).
    pub state: String,
    pub twilio_call_sid: Option<String>,
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub node: String,
    pub lease_until_ms: i64,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
}

/// A placed (or possibly placed) call to a number, for the calling rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct HistoryEntry {
    pub started_at_ms: i64,
    pub campaign_id: String,
    pub outcome: Option<String>,
}

/// One line of a contact's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct ContactLogEntry {
    /// `imported`, `deferred`, `refused`, `dialing`, `placed`, `not_placed`, `outcome`,
    /// `retry`, `final`, `canceled`.
    pub kind: String,
    pub code: Option<String>,
    pub message: String,
    pub at_ms: i64,
}

/// Contacts of a campaign by state.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CampaignCounts {
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
    /// The earliest `next_run_at_ms` of a pending or deferred contact.
    pub next_due_at_ms: Option<i64>,
    /// Average duration of this campaign's finished, answered calls, seconds.
    pub avg_call_s: Option<f64>,
}

/// A do-not-call entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct DncEntry {
    pub phone: String,
    pub reason: Option<String>,
    /// Who added it: `api`, `cli`, `agent` (the opt-out tool), `import`.
    pub source: String,
    pub added_at_ms: i64,
}

/// What to do with a due contact (the calling rules' verdict).
#[derive(Debug, Clone, PartialEq)]
pub enum DispatchChoice {
    /// Dial now.
    Dial,
    /// Not now: due again at `until_ms`, for this reason.
    Defer {
        until_ms: i64,
        code: String,
        message: String,
    },
    /// Never: the contact ends in `state` (`refused`, `opted_out`, `failed`).
    Refuse {
        state: &'static str,
        code: String,
        message: String,
    },
}

/// Input of the calling rules for one due contact.
pub struct DispatchInput<'a> {
    pub campaign: &'a CampaignRecord,
    pub contact: &'a ContactRecord,
    pub do_not_call: bool,
    /// Calls placed to this number in the last [`HISTORY_WINDOW_MS`], any campaign.
    pub history: &'a [HistoryEntry],
}

/// Limits of one [`Store::dispatch`].
#[derive(Debug, Clone)]
pub struct DispatchLimits {
    pub now_ms: i64,
    /// This node's id, written on the attempts it dials.
    pub node: String,
    /// How long this node owns a `dialing` attempt before the reconciler may look at it.
    pub lease_ms: i64,
    /// Calls this node may still start (its global limit minus its live calls).
    pub node_free: i64,
}

/// A call to place: the attempt is stored as `dialing`, the call row as `queued`.
#[derive(Debug, Clone)]
pub struct DialTicket {
    pub attempt: AttemptRecord,
    pub contact: ContactRecord,
    pub campaign: CampaignRecord,
}

/// What happens to a contact after a call ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ContactNext {
    /// Due again at `at_ms` (state `deferred`).
    Retry { at_ms: i64, message: String },
    /// Done: `completed`, `failed`, `opted_out`, `refused`.
    Final {
        state: &'static str,
        code: String,
        message: String,
    },
}

/// Input of the retry rules after a call ended.
pub struct FinishInput<'a> {
    pub campaign: &'a CampaignRecord,
    /// The contact, its `attempts` counting the call that just ended.
    pub contact: &'a ContactRecord,
    pub outcome: &'a str,
    /// Calls placed to this number recently (including the one that ended), any campaign.
    pub history: &'a [HistoryEntry],
}

/// A contact query for [`Store::list_contacts`].
#[derive(Debug, Clone, Default)]
pub struct ContactFilter {
    pub state: Option<String>,
    pub limit: i64,
    pub offset: i64,
}

const FINAL_CONTACT_STATES: [&str; 5] = ["completed", "failed", "opted_out", "refused", "canceled"];

impl Store {
    // -- campaigns -----------------------------------------------------------------------------

    /// Creates a campaign and its contacts in one transaction (all or nothing). Contacts start
    /// `pending`, due at the campaign's creation.
    pub async fn create_campaign(
        &self,
        c: &NewCampaign,
        contacts: &[NewContact],
    ) -> Result<CampaignRecord, StoreError> {
        let task = c.task.as_ref().map(to_json_text).transpose()?;
        let policy = to_json_text(&c.policy)?;
        const SQL: &str = concat!(
            "INSERT INTO campaigns (id, name, agent, task, from_number, policy, status, \
             max_concurrent, calls_per_minute, failure_threshold, api_key_id, created_at_ms, \
             updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $9, $10, $11, $11) \
             RETURNING ",
            campaign_cols!()
        );
        let prepared = prepare_contacts(&c.id, contacts, c.created_at_ms)?;
        let row = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query_as::<_, CampaignRow>(SQL)
                .bind(&c.id)
                .bind(&c.name)
                .bind(&c.agent)
                .bind(&task)
                .bind(&c.from_number)
                .bind(&policy)
                .bind(c.max_concurrent)
                .bind(c.calls_per_minute)
                .bind(c.failure_threshold)
                .bind(&c.api_key_id)
                .bind(c.created_at_ms)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| conflict_or(e, "campaign already exists"))?;
            for (id, n, ctx) in &prepared {
                insert_contact!(tx, id, &c.id, n, ctx, c.created_at_ms);
            }
            tx.commit().await?;
            row
        });
        row.try_into()
    }

    /// Adds contacts to a campaign in one transaction (all or nothing). `Conflict` when a
    /// number is already in the campaign; `NotFound` for an unknown campaign.
    pub async fn add_contacts(
        &self,
        campaign_id: &str,
        contacts: &[NewContact],
        now_ms: i64,
    ) -> Result<usize, StoreError> {
        let prepared = prepare_contacts(campaign_id, contacts, now_ms)?;
        const TOUCH: &str = "UPDATE campaigns SET updated_at_ms = $2, \
             status = CASE WHEN status = 'completed' THEN 'active' ELSE status END \
             WHERE id = $1 AND status <> 'canceled'";
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(TOUCH)
                .bind(campaign_id)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            require_one(n)?;
            for (id, n, ctx) in &prepared {
                insert_contact!(tx, id, campaign_id, n, ctx, now_ms);
            }
            tx.commit().await?;
        });
        Ok(prepared.len())
    }

    /// The numbers already in a campaign.
    pub async fn campaign_phones(&self, campaign_id: &str) -> Result<HashSet<String>, StoreError> {
        const SQL: &str = "SELECT phone FROM contacts WHERE campaign_id = $1";
        let phones: Vec<String> = with_pool!(self, p => sqlx::query_scalar(SQL)
            .bind(campaign_id)
            .fetch_all(p)
            .await)?;
        Ok(phones.into_iter().collect())
    }

    /// The campaign with this id, if any.
    pub async fn get_campaign(&self, id: &str) -> Result<Option<CampaignRecord>, StoreError> {
        const SQL: &str = concat!("SELECT ", campaign_cols!(), " FROM campaigns WHERE id = $1");
        let row = with_pool!(self, p => sqlx::query_as::<_, CampaignRow>(SQL)
            .bind(id)
            .fetch_optional(p)
            .await)?;
        row.map(CampaignRecord::try_from).transpose()
    }

    /// All campaigns, newest first.
    pub async fn list_campaigns(&self) -> Result<Vec<CampaignRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            campaign_cols!(),
            " FROM campaigns ORDER BY created_at_ms DESC, id DESC"
        );
        let rows = with_pool!(self, p => sqlx::query_as::<_, CampaignRow>(SQL)
            .fetch_all(p)
            .await)?;
        rows.into_iter().map(CampaignRecord::try_from).collect()
    }

    /// Marks `completed` every active campaign none of whose contacts has work left; returns
    /// how many. Finishing a call does this in its own transaction; this catches the paths
    /// that close a campaign's last contacts without a call ending (numbers added to the
    /// do-not-call list, a campaign resumed after its last call ended while paused). The
    /// campaign worker runs it every pass.
    pub async fn complete_finished_campaigns(&self, now_ms: i64) -> Result<u64, StoreError> {
        const CANDIDATES: &str = "SELECT c.id FROM campaigns c WHERE c.status = 'active' AND \
             NOT EXISTS (SELECT 1 FROM contacts k WHERE k.campaign_id = c.id AND \
             k.state IN ('pending', 'deferred', 'dialing', 'in_call'))";
        // Row lock first, then the check in a statement of its own: on PostgreSQL a contact
        // added meanwhile (which also touches the campaign row) is seen by that statement.
        const LOCK: &str = "UPDATE campaigns SET updated_at_ms = updated_at_ms \
             WHERE id = $1 AND status = 'active'";
        let ids: Vec<String> =
            with_pool!(self, p => sqlx::query_scalar(CANDIDATES).fetch_all(p).await)?;
        let mut completed = 0;
        for id in ids {
            with_pool!(self, p => {
                let mut tx = p.begin().await?;
                sqlx::query(LOCK).bind(&id).execute(&mut *tx).await?;
                completed += complete_if_done!(tx, &id, now_ms).rows_affected();
                tx.commit().await?;
            });
        }
        Ok(completed)
    }

    /// Ids of the active campaigns that have a contact due at `now_ms`.
    pub async fn due_campaigns(&self, now_ms: i64) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT c.id FROM campaigns c WHERE c.status = 'active' AND \
             c.next_dial_at_ms <= $1 AND EXISTS (SELECT 1 FROM contacts k WHERE \
             k.campaign_id = c.id AND k.state IN ('pending', 'deferred') AND \
             k.next_run_at_ms <= $1) ORDER BY c.created_at_ms, c.id";
        Ok(with_pool!(self, p => sqlx::query_scalar(SQL)
            .bind(now_ms)
            .fetch_all(p)
            .await)?)
    }

    /// The earliest instant any active campaign has a contact due (for the worker's sleep).
    pub async fn next_due_ms(&self) -> Result<Option<i64>, StoreError> {
        const SQL: &str = "SELECT MIN(CASE WHEN k.next_run_at_ms > c.next_dial_at_ms \
             THEN k.next_run_at_ms ELSE c.next_dial_at_ms END) FROM contacts k \
             JOIN campaigns c ON c.id = k.campaign_id \
             WHERE c.status = 'active' AND k.state IN ('pending', 'deferred')";
        Ok(
            with_pool!(self, p => sqlx::query_scalar::<_, Option<i64>>(SQL)
            .fetch_one(p)
            .await)?,
        )
    }

    /// Sets a campaign's status when it is currently one of `from`; returns the record, or
    /// `Conflict` naming the current status, or `NotFound`. Canceling also cancels the
    /// contacts that were still waiting (calls in progress finish normally).
    pub async fn set_campaign_status(
        &self,
        id: &str,
        status: &str,
        reason: Option<&str>,
        from: &[&str],
        now_ms: i64,
    ) -> Result<CampaignRecord, StoreError> {
        let current = self.get_campaign(id).await?.ok_or(StoreError::NotFound)?;
        if !from.contains(&current.status.as_str()) {
            return Err(StoreError::Conflict(format!(
                "campaign is {}, not {}",
                current.status,
                from.join(" or ")
            )));
        }
        const SQL: &str = "UPDATE campaigns SET status = $2, status_reason = $3, \
             updated_at_ms = $4 WHERE id = $1 AND status = $5";
        const CANCEL: &str = "UPDATE contacts SET state = 'canceled', reason_code = 'CANCELED', \
             reason = 'the campaign was canceled', updated_at_ms = $2 \
             WHERE campaign_id = $1 AND state IN ('pending', 'deferred')";
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(SQL)
                .bind(id)
                .bind(status)
                .bind(reason)
                .bind(now_ms)
                .bind(&current.status)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n == 0 {
                return Err(StoreError::Conflict("campaign status changed meanwhile".into()));
            }
            if status == "canceled" {
                sqlx::query(CANCEL).bind(id).bind(now_ms).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        self.get_campaign(id).await?.ok_or(StoreError::NotFound)
    }

    /// Counts of a campaign's contacts by state.
    pub async fn campaign_counts(&self, id: &str) -> Result<CampaignCounts, StoreError> {
        const SQL: &str = "SELECT state, COUNT(*) FROM contacts WHERE campaign_id = $1 \
             GROUP BY state";
        const DUE: &str = "SELECT MIN(next_run_at_ms) FROM contacts WHERE campaign_id = $1 \
             AND state IN ('pending', 'deferred')";
        const AVG: &str = "SELECT AVG(CAST(c.duration_s AS DOUBLE PRECISION)) FROM attempts a \
             JOIN calls c ON c.id = a.call_id WHERE a.campaign_id = $1 AND a.state = 'done' \
             AND c.duration_s IS NOT NULL AND c.duration_s > 0";
        let (rows, due, avg) = with_pool!(self, p => {
            let rows: Vec<(String, i64)> = sqlx::query_as(SQL).bind(id).fetch_all(p).await?;
            let due: Option<i64> = sqlx::query_scalar(DUE).bind(id).fetch_one(p).await?;
            let avg: Option<f64> = sqlx::query_scalar(AVG).bind(id).fetch_one(p).await?;
            (rows, due, avg)
        });
        let mut c = CampaignCounts {
            next_due_at_ms: due,
            avg_call_s: avg,
            ..CampaignCounts::default()
        };
        for (state, n) in rows {
            c.total += n;
            match state.as_str() {
                "pending" => c.pending = n,
                "deferred" => c.deferred = n,
                "dialing" => c.dialing = n,
                "in_call" => c.in_call = n,
                "completed" => c.completed = n,
                "failed" => c.failed = n,
                "opted_out" => c.opted_out = n,
                "refused" => c.refused = n,
                "canceled" => c.canceled = n,
                _ => {}
            }
        }
        Ok(c)
    }

    // -- contacts ------------------------------------------------------------------------------

    /// A campaign's contacts in import order, optionally of one state.
    pub async fn list_contacts(
        &self,
        campaign_id: &str,
        f: &ContactFilter,
    ) -> Result<Vec<ContactRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            contact_cols!(),
            " FROM contacts WHERE campaign_id = $1 AND ($2 IS NULL OR state = $2) \
             ORDER BY row_number, id LIMIT $3 OFFSET $4"
        );
        const PG: &str = concat!(
            "SELECT ",
            contact_cols!(),
            " FROM contacts WHERE campaign_id = $1 AND ($2::text IS NULL OR state = $2) \
             ORDER BY row_number, id LIMIT $3 OFFSET $4"
        );
        let limit = if f.limit <= 0 { 100 } else { f.limit.min(1000) };
        let sql = if self.backend() == "postgres" {
            PG
        } else {
            SQL
        };
        let rows = with_pool!(self, p => sqlx::query_as::<_, ContactRow>(sql)
            .bind(campaign_id)
            .bind(&f.state)
            .bind(limit)
            .bind(f.offset.max(0))
            .fetch_all(p)
            .await)?;
        rows.into_iter().map(ContactRecord::try_from).collect()
    }

    /// The contact with this id, if any.
    pub async fn get_contact(&self, id: &str) -> Result<Option<ContactRecord>, StoreError> {
        const SQL: &str = concat!("SELECT ", contact_cols!(), " FROM contacts WHERE id = $1");
        let row = with_pool!(self, p => sqlx::query_as::<_, ContactRow>(SQL)
            .bind(id)
            .fetch_optional(p)
            .await)?;
        row.map(ContactRecord::try_from).transpose()
    }

    /// A contact's log, oldest first.
    pub async fn contact_log(&self, contact_id: &str) -> Result<Vec<ContactLogEntry>, StoreError> {
        const SQL: &str = "SELECT kind, code, message, at_ms FROM contact_log \
             WHERE contact_id = $1 ORDER BY id";
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, ContactLogEntry>(SQL)
            .bind(contact_id)
            .fetch_all(p)
            .await)?,
        )
    }

    /// Appends a line to a contact's log.
    pub async fn log_contact(
        &self,
        contact_id: &str,
        kind: &str,
        code: Option<&str>,
        message: &str,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            log_row!(tx, contact_id, kind, code, message, at_ms);
            tx.commit().await?;
        });
        Ok(())
    }

    /// A contact's attempts, by `seq`.
    pub async fn contact_attempts(
        &self,
        contact_id: &str,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            attempt_cols!(),
            " FROM attempts WHERE contact_id = $1 ORDER BY seq"
        );
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, AttemptRecord>(SQL)
            .bind(contact_id)
            .fetch_all(p)
            .await)?,
        )
    }

    /// Every attempt of a campaign, by start.
    pub async fn campaign_attempts(
        &self,
        campaign_id: &str,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            attempt_cols!(),
            " FROM attempts WHERE campaign_id = $1 ORDER BY started_at_ms, id"
        );
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, AttemptRecord>(SQL)
            .bind(campaign_id)
            .fetch_all(p)
            .await)?,
        )
    }

    // -- the queue -----------------------------------------------------------------------------

    /// Takes due contacts of one active campaign off the queue, within the campaign's
    /// concurrency limit and pacing and `lim.node_free`, asking `decide` about each: dialed
    /// contacts get a `dialing` attempt and a `queued` call row (returned as tickets, to be
    /// dialed by the caller), deferred and refused ones are rescheduled or closed with their
    /// reason logged. One transaction; the campaign row is locked first, so concurrent
    /// dispatchers (threads or nodes) of one campaign take turns.
    pub async fn dispatch<F>(
        &self,
        campaign_id: &str,
        lim: &DispatchLimits,
        mut decide: F,
    ) -> Result<Vec<DialTicket>, StoreError>
    where
        F: FnMut(&DispatchInput<'_>) -> DispatchChoice,
    {
        const LOCK: &str = concat!(
            "UPDATE campaigns SET updated_at_ms = updated_at_ms WHERE id = $1 AND \
             status = 'active' RETURNING ",
            campaign_cols!()
        );
        const LIVE: &str = "SELECT COUNT(*) FROM attempts WHERE campaign_id = $1 \
             AND state IN ('dialing', 'in_call')";
        const DUE_SQLITE: &str = concat!(
            "SELECT ",
            contact_cols!(),
            " FROM contacts WHERE campaign_id = $1 AND state IN ('pending', 'deferred') \
             AND next_run_at_ms <= $2 ORDER BY next_run_at_ms, row_number LIMIT $3"
        );
        const DUE_PG: &str = concat!(
            "SELECT ",
            contact_cols!(),
            " FROM contacts WHERE campaign_id = $1 AND state IN ('pending', 'deferred') \
             AND next_run_at_ms <= $2 ORDER BY next_run_at_ms, row_number LIMIT $3 \
             FOR UPDATE SKIP LOCKED"
        );
        const DNC: &str = "SELECT COUNT(*) FROM do_not_call WHERE phone = $1";
        const LIVE_PHONE: &str = "SELECT COUNT(*) FROM attempts WHERE phone = $1 \
             AND state IN ('dialing', 'in_call')";
        const NEXT_SEQ: &str = "SELECT COALESCE(MAX(seq), 0) + 1 FROM attempts \
             WHERE contact_id = $1";
        const NEW_CALL: &str = "INSERT INTO calls (id, direction, from_number, to_number, agent, \
             task, status, status_history, api_key_id, created_at_ms) \
             VALUES ($1, 'outbound', $2, $3, $4, $5, 'queued', $6, $7, $8)";
        const NEW_ATTEMPT: &str = concat!(
            "INSERT INTO attempts (id, contact_id, campaign_id, phone, seq, call_id, state, \
             node, lease_until_ms, started_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, 'dialing', $7, $8, $9) RETURNING ",
            attempt_cols!()
        );
        const DIALING: &str = concat!(
            "UPDATE contacts SET state = 'dialing', attempts = attempts + 1, \
             first_attempt_at_ms = COALESCE(first_attempt_at_ms, $2), reason_code = NULL, \
             reason = NULL, updated_at_ms = $2 WHERE id = $1 RETURNING ",
            contact_cols!()
        );
        const DEFER: &str = "UPDATE contacts SET state = 'deferred', next_run_at_ms = $2, \
             reason_code = $3, reason = $4, updated_at_ms = $5 WHERE id = $1";
        const REFUSE: &str = "UPDATE contacts SET state = $2, reason_code = $3, reason = $4, \
             updated_at_ms = $5 WHERE id = $1";
        const PACE: &str = "UPDATE campaigns SET next_dial_at_ms = $2 WHERE id = $1";

        let pg = matches!(self.pool, Pool::Postgres(_));
        let due_sql = if pg { DUE_PG } else { DUE_SQLITE };
        let now = lim.now_ms;
        let mut tickets = Vec::new();
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let Some(row) = sqlx::query_as::<_, CampaignRow>(LOCK)
                .bind(campaign_id)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(Vec::new());
            };
            let campaign = CampaignRecord::try_from(row)?;
            let live: i64 = sqlx::query_scalar(LIVE)
                .bind(campaign_id)
                .fetch_one(&mut *tx)
                .await?;
            let mut free = (campaign.max_concurrent - live).min(lim.node_free);
            // Pacing: one call per interval. After idle time at most one second's worth of
            // calls may catch up (the worker ticks about once a second).
            let interval = if campaign.calls_per_minute > 0 {
                (60_000 / campaign.calls_per_minute).max(1)
            } else {
                0
            };
            let mut next_dial = campaign.next_dial_at_ms.max(now - 1_000);
            if interval > 0 {
                let slots = if next_dial > now { 0 } else { (now - next_dial) / interval + 1 };
                free = free.min(slots);
            }
            if free <= 0 {
                return Ok(Vec::new());
            }
            // Fetch more than we may dial: some will be deferred or refused.
            let fetch = (free * 4).clamp(8, 200);
            let due: Vec<ContactRow> = sqlx::query_as(due_sql)
                .bind(campaign_id)
                .bind(now)
                .bind(fetch)
                .fetch_all(&mut *tx)
                .await?;
            for row in due {
                if free == 0 {
                    break;
                }
                let contact = ContactRecord::try_from(row)?;
                let dnc: i64 = sqlx::query_scalar(DNC)
                    .bind(&contact.phone)
                    .fetch_one(&mut *tx)
                    .await?;
                let history: Vec<HistoryEntry> = sqlx::query_as(HISTORY)
                    .bind(&contact.phone)
                    .bind(now - HISTORY_WINDOW_MS)
                    .fetch_all(&mut *tx)
                    .await?;
                let mut choice = decide(&DispatchInput {
                    campaign: &campaign,
                    contact: &contact,
                    do_not_call: dnc > 0,
                    history: &history,
                });
                if choice == DispatchChoice::Dial {
                    let busy: i64 = sqlx::query_scalar(LIVE_PHONE)
                        .bind(&contact.phone)
                        .fetch_one(&mut *tx)
                        .await?;
                    if busy > 0 {
                        choice = DispatchChoice::Defer {
                            until_ms: now + 60_000,
                            code: "NUMBER_BUSY_HERE".into(),
                            message: "another call to this number is in progress".into(),
                        };
                    }
                }
                match choice {
                    DispatchChoice::Dial => {
                        let seq: i64 = sqlx::query_scalar(NEXT_SEQ)
                            .bind(&contact.id)
                            .fetch_one(&mut *tx)
                            .await?;
                        let call_id = uuid::Uuid::now_v7().to_string();
                        let attempt_id = uuid::Uuid::now_v7().to_string();
                        let task = to_json_text(&call_task(&campaign, &contact))?;
                        let history_json = to_json_text(&[crate::StatusChange {
                            status: "queued".into(),
                            at_ms: now,
                        }])?;
                        sqlx::query(NEW_CALL)
                            .bind(&call_id)
                            .bind(&campaign.from_number)
                            .bind(&contact.phone)
                            .bind(&campaign.agent)
                            .bind(&task)
                            .bind(&history_json)
                            .bind(&campaign.api_key_id)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        let attempt: AttemptRecord = sqlx::query_as(NEW_ATTEMPT)
                            .bind(&attempt_id)
                            .bind(&contact.id)
                            .bind(campaign_id)
                            .bind(&contact.phone)
                            .bind(seq)
                            .bind(&call_id)
                            .bind(&lim.node)
                            .bind(now + lim.lease_ms)
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await?;
                        let contact: ContactRow = sqlx::query_as(DIALING)
                            .bind(&contact.id)
                            .bind(now)
                            .fetch_one(&mut *tx)
                            .await?;
                        log_row!(tx, &attempt.contact_id, "dialing", None::<&str>,
                            &format!("attempt {seq}: dialing (call {call_id})"), now);
                        tickets.push(DialTicket {
                            attempt,
                            contact: contact.try_into()?,
                            campaign: campaign.clone(),
                        });
                        free -= 1;
                        if interval > 0 {
                            next_dial += interval;
                        }
                    }
                    DispatchChoice::Defer { until_ms, code, message } => {
                        sqlx::query(DEFER)
                            .bind(&contact.id)
                            .bind(until_ms.max(now + 1))
                            .bind(&code)
                            .bind(&message)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        log_row!(tx, &contact.id, "deferred", Some(code.as_str()), &message, now);
                    }
                    DispatchChoice::Refuse { state, code, message } => {
                        sqlx::query(REFUSE)
                            .bind(&contact.id)
                            .bind(state)
                            .bind(&code)
                            .bind(&message)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                        log_row!(tx, &contact.id, "refused", Some(code.as_str()), &message, now);
                    }
                }
            }
            if interval > 0 && !tickets.is_empty() {
                sqlx::query(PACE)
                    .bind(campaign_id)
                    .bind(next_dial)
                    .execute(&mut *tx)
                    .await?;
            }
            complete_if_done!(tx, campaign_id, now);
            tx.commit().await?;
        });
        Ok(tickets)
    }

    /// Twilio accepted the call: the attempt is `in_call` with its CallSid, owned by this node
    /// until `lease_until_ms` (after which the reconciler may ask Twilio about it).
    pub async fn attempt_placed(
        &self,
        attempt_id: &str,
        call_sid: &str,
        lease_until_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE attempts SET state = 'in_call', twilio_call_sid = $2, \
             lease_until_ms = $3 WHERE id = $1 AND state = 'dialing' RETURNING contact_id, call_id";
        const CONTACT: &str = "UPDATE contacts SET state = 'in_call', updated_at_ms = $2 \
             WHERE id = $1 AND state = 'dialing'";
        const CALL: &str = "UPDATE calls SET twilio_call_sid = COALESCE(twilio_call_sid, $2) \
             WHERE id = $1";
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let row: Option<(String, String)> = sqlx::query_as(SQL)
                .bind(attempt_id)
                .bind(call_sid)
                .bind(lease_until_ms)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((contact_id, call_id)) = row else {
                return Ok(false);
            };
            sqlx::query(CONTACT).bind(&contact_id).bind(now_ms).execute(&mut *tx).await?;
            sqlx::query(CALL)
                .bind(&call_id)
                .bind(call_sid)
                .execute(&mut *tx)
                .await
                .map_err(|e| conflict_or(e, "Twilio call sid belongs to another call"))?;
            log_row!(tx, &contact_id, "placed", None::<&str>,
                &format!("Twilio placed the call ({call_sid})"), now_ms);
            tx.commit().await?;
        });
        Ok(true)
    }

    /// The call was certainly never placed (Twilio refused it before creating it, or the
    /// reconciler found no such call at Twilio): the attempt becomes `not_placed` and the
    /// contact goes back on the queue at `retry_at_ms`, its attempt count unchanged.
    pub async fn attempt_not_placed(
        &self,
        attempt_id: &str,
        detail: &str,
        retry_at_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "UPDATE attempts SET state = 'not_placed', detail = $2, \
             ended_at_ms = $3 WHERE id = $1 AND state = 'dialing' RETURNING contact_id, call_id";
        const CONTACT: &str = "UPDATE contacts SET state = 'pending', next_run_at_ms = $2, \
             attempts = attempts - 1, reason_code = 'NOT_PLACED', reason = $3, \
             updated_at_ms = $4 WHERE id = $1 AND state IN ('dialing', 'in_call')";
        const FIRST: &str = "UPDATE contacts SET first_attempt_at_ms = NULL \
             WHERE id = $1 AND attempts = 0";
        const CALL: &str = "UPDATE calls SET status = 'canceled', end_reason = \
             COALESCE(end_reason, $2), ended_at_ms = COALESCE(ended_at_ms, $3) WHERE id = $1";
        with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let row: Option<(String, String)> = sqlx::query_as(SQL)
                .bind(attempt_id)
                .bind(detail)
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((contact_id, call_id)) = row else {
                return Ok(false);
            };
            sqlx::query(CONTACT)
                .bind(&contact_id)
                .bind(retry_at_ms)
                .bind(detail)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            sqlx::query(FIRST).bind(&contact_id).execute(&mut *tx).await?;
            sqlx::query(CALL)
                .bind(&call_id)
                .bind(format!("not placed: {detail}"))
                .bind(now_ms)
                .execute(&mut *tx)
                .await?;
            log_row!(tx, &contact_id, "not_placed", Some("NOT_PLACED"), detail, now_ms);
            tx.commit().await?;
        });
        Ok(true)
    }

    /// The attempt that placed this call, if the call belongs to a campaign.
    pub async fn attempt_by_call(
        &self,
        call_id: &str,
    ) -> Result<Option<AttemptRecord>, StoreError> {
        const SQL: &str = concat!(
            "SELECT ",
            attempt_cols!(),
            " FROM attempts WHERE call_id = $1"
        );
        Ok(
            with_pool!(self, p => sqlx::query_as::<_, AttemptRecord>(SQL)
            .bind(call_id)
            .fetch_optional(p)
            .await)?,
        )
    }

    /// The call ended with `outcome`: the attempt becomes `done` and `next` (the retry rules)
    /// decides the contact's fate, in one transaction. `Ok(None)` when the attempt was already
    /// finished (callbacks and the reconciler may both report an end).
    pub async fn finish_attempt<F>(
        &self,
        attempt_id: &str,
        outcome: &str,
        detail: Option<&str>,
        now_ms: i64,
        next: F,
    ) -> Result<Option<(ContactRecord, ContactNext)>, StoreError>
    where
        F: FnOnce(&FinishInput<'_>) -> ContactNext,
    {
        // The campaign row first, as `dispatch` does: two finishes of a campaign's last calls
        // must not run side by side, or each sees the other's contact still in a call and
        // neither marks the campaign completed (PostgreSQL, READ COMMITTED).
        const LOCK: &str = "UPDATE campaigns SET updated_at_ms = updated_at_ms \
             WHERE id = (SELECT campaign_id FROM attempts WHERE id = $1)";
        const DONE: &str = "UPDATE attempts SET state = 'done', outcome = $2, \
             detail = COALESCE($3, detail), ended_at_ms = $4 \
             WHERE id = $1 AND state IN ('dialing', 'in_call') RETURNING contact_id, campaign_id, phone";
        const CAMPAIGN: &str =
            concat!("SELECT ", campaign_cols!(), " FROM campaigns WHERE id = $1");
        const CONTACT: &str = concat!("SELECT ", contact_cols!(), " FROM contacts WHERE id = $1");
        const RETRY: &str = concat!(
            "UPDATE contacts SET state = 'deferred', next_run_at_ms = $2, last_outcome = $3, \
             reason_code = 'RETRY', reason = $4, updated_at_ms = $5 WHERE id = $1 RETURNING ",
            contact_cols!()
        );
        const FINAL: &str = concat!(
            "UPDATE contacts SET state = $2, last_outcome = $3, reason_code = $4, reason = $5, \
             updated_at_ms = $6 WHERE id = $1 RETURNING ",
            contact_cols!()
        );
        let result = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(LOCK).bind(attempt_id).execute(&mut *tx).await?;
            let row: Option<(String, String, String)> = sqlx::query_as(DONE)
                .bind(attempt_id)
                .bind(outcome)
                .bind(detail)
                .bind(now_ms)
                .fetch_optional(&mut *tx)
                .await?;
            let Some((contact_id, campaign_id, phone)) = row else {
                return Ok(None);
            };
            let campaign: CampaignRecord = sqlx::query_as::<_, CampaignRow>(CAMPAIGN)
                .bind(&campaign_id)
                .fetch_one(&mut *tx)
                .await?
                .try_into()?;
            let contact: ContactRecord = sqlx::query_as::<_, ContactRow>(CONTACT)
                .bind(&contact_id)
                .fetch_one(&mut *tx)
                .await?
                .try_into()?;
            let history: Vec<HistoryEntry> = sqlx::query_as(HISTORY)
                .bind(&phone)
                .bind(now_ms - HISTORY_WINDOW_MS)
                .fetch_all(&mut *tx)
                .await?;
            let decision = next(&FinishInput {
                campaign: &campaign,
                contact: &contact,
                outcome,
                history: &history,
            });
            let msg = format!("call ended: {outcome}{}", detail.map(|d| format!(" ({d})")).unwrap_or_default());
            log_row!(tx, &contact_id, "outcome", Some(outcome), &msg, now_ms);
            let updated: ContactRow = match &decision {
                ContactNext::Retry { at_ms, message } => {
                    log_row!(tx, &contact_id, "retry", Some("RETRY"), message, now_ms);
                    sqlx::query_as(RETRY)
                        .bind(&contact_id)
                        .bind(*at_ms)
                        .bind(outcome)
                        .bind(message)
                        .bind(now_ms)
                        .fetch_one(&mut *tx)
                        .await?
                }
                ContactNext::Final { state, code, message } => {
                    log_row!(tx, &contact_id, "final", Some(code.as_str()), message, now_ms);
                    sqlx::query_as(FINAL)
                        .bind(&contact_id)
                        .bind(*state)
                        .bind(outcome)
                        .bind(code)
                        .bind(message)
                        .bind(now_ms)
                        .fetch_one(&mut *tx)
                        .await?
                }
            };
            complete_if_done!(tx, &campaign_id, now_ms);
            tx.commit().await?;
            (updated, decision)
        });
        Ok(Some((result.0.try_into()?, result.1)))
    }

    /// Claims up to `limit` attempts whose owner's lease ran out (the node died, or a call's
    /// end was never reported): `dialing` ones are in doubt, `in_call` ones are stale. The
    /// claimer owns them until `now_ms + lease_ms` and must find out from Twilio what happened.
    pub async fn claim_expired_attempts(
        &self,
        now_ms: i64,
        node: &str,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<AttemptRecord>, StoreError> {
        const PICK: &str = "SELECT id FROM attempts WHERE state IN ('dialing', 'in_call') \
             AND lease_until_ms < $1 ORDER BY lease_until_ms LIMIT $2";
        const CLAIM: &str = concat!(
            "UPDATE attempts SET node = $2, lease_until_ms = $3 WHERE id = $1 \
             AND state IN ('dialing', 'in_call') AND lease_until_ms < $4 RETURNING ",
            attempt_cols!()
        );
        let ids: Vec<String> = with_pool!(self, p => sqlx::query_scalar(PICK)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(p)
            .await)?;
        let mut out = Vec::new();
        for id in ids {
            let row: Option<AttemptRecord> = with_pool!(self, p => sqlx::query_as(CLAIM)
                .bind(&id)
                .bind(node)
                .bind(now_ms + lease_ms)
                .bind(now_ms)
                .fetch_optional(p)
                .await)?;
            out.extend(row);
        }
        Ok(out)
    }

    /// At startup: this node's `dialing` attempts (started before `now_ms - 2 s`, so not one a
    /// twin process with the same node id is sending right now) are in doubt; their lease is
    /// ended so the reconciler looks at them at once. Returns how many.
    pub async fn release_node_leases(&self, node: &str, now_ms: i64) -> Result<u64, StoreError> {
        const SQL: &str = "UPDATE attempts SET lease_until_ms = 0 WHERE node = $1 \
             AND state = 'dialing' AND started_at_ms < $2";
        Ok(with_pool!(self, p => sqlx::query(SQL)
            .bind(node)
            .bind(now_ms - 2_000)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?)
    }

    /// Extends this node's lease on an attempt.
    pub async fn extend_attempt_lease(
        &self,
        attempt_id: &str,
        lease_until_ms: i64,
    ) -> Result<(), StoreError> {
        const SQL: &str = "UPDATE attempts SET lease_until_ms = $2 WHERE id = $1";
        with_pool!(self, p => sqlx::query(SQL)
            .bind(attempt_id)
            .bind(lease_until_ms)
            .execute(p)
            .await
            .map(|_| ()))?;
        Ok(())
    }

    /// Live attempts (dialing or in a call) dialed by `node`.
    pub async fn live_attempts_of_node(&self, node: &str) -> Result<i64, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM attempts WHERE node = $1 \
             AND state IN ('dialing', 'in_call')";
        Ok(with_pool!(self, p => sqlx::query_scalar(SQL).bind(node).fetch_one(p).await)?)
    }

    /// Twilio SIDs already tied to an attempt, among `sids`.
    pub async fn known_call_sids(&self, sids: &[String]) -> Result<HashSet<String>, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM attempts WHERE twilio_call_sid = $1";
        const CALLS: &str = "SELECT COUNT(*) FROM calls WHERE twilio_call_sid = $1";
        let mut known = HashSet::new();
        for sid in sids {
            let n: i64 = with_pool!(self, p => {
                let a: i64 = sqlx::query_scalar(SQL).bind(sid).fetch_one(p).await?;
                let c: i64 = sqlx::query_scalar(CALLS).bind(sid).fetch_one(p).await?;
                a + c
            });
            if n > 0 {
                known.insert(sid.clone());
            }
        }
        Ok(known)
    }

    /// Outcomes of the campaign's attempts that ended at or after `since_ms`, newest first.
    pub async fn recent_outcomes(
        &self,
        campaign_id: &str,
        since_ms: i64,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        const SQL: &str = "SELECT outcome FROM attempts WHERE campaign_id = $1 \
             AND state = 'done' AND outcome IS NOT NULL AND ended_at_ms >= $2 \
             ORDER BY ended_at_ms DESC LIMIT $3";
        Ok(with_pool!(self, p => sqlx::query_scalar(SQL)
            .bind(campaign_id)
            .bind(since_ms)
            .bind(limit)
            .fetch_all(p)
            .await)?)
    }

    // -- do-not-call ---------------------------------------------------------------------------

    /// Adds a number to the do-not-call list; `false` when it was already there. Contacts of
    /// that number still waiting in any campaign are closed as `opted_out`.
    pub async fn add_dnc(
        &self,
        phone: &str,
        reason: Option<&str>,
        source: &str,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        const SQL: &str = "INSERT INTO do_not_call (phone, reason, source, added_at_ms) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (phone) DO NOTHING";
        const CLOSE: &str = "UPDATE contacts SET state = 'opted_out', reason_code = 'DO_NOT_CALL', \
             reason = 'the number was added to the do-not-call list', updated_at_ms = $2 \
             WHERE phone = $1 AND state IN ('pending', 'deferred')";
        let n = with_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(SQL)
                .bind(phone)
                .bind(reason)
                .bind(source)
                .bind(now_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query(CLOSE).bind(phone).bind(now_ms).execute(&mut *tx).await?;
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Removes a number from the do-not-call list; `false` when it was not there.
    pub async fn remove_dnc(&self, phone: &str) -> Result<bool, StoreError> {
        const SQL: &str = "DELETE FROM do_not_call WHERE phone = $1";
        let n = with_pool!(self, p => sqlx::query(SQL)
            .bind(phone)
            .execute(p)
            .await
            .map(|r| r.rows_affected()))?;
        Ok(n == 1)
    }

    /// Whether the number is on the do-not-call list.
    pub async fn is_dnc(&self, phone: &str) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT COUNT(*) FROM do_not_call WHERE phone = $1";
        let n: i64 = with_pool!(self, p => sqlx::query_scalar(SQL).bind(phone).fetch_one(p).await)?;
        Ok(n > 0)
    }

    /// The do-not-call list, newest first.
    pub async fn list_dnc(&self) -> Result<Vec<DncEntry>, StoreError> {
        const SQL: &str = "SELECT phone, reason, source, added_at_ms FROM do_not_call \
             ORDER BY added_at_ms DESC, phone";
        Ok(with_pool!(self, p => sqlx::query_as::<_, DncEntry>(SQL).fetch_all(p).await)?)
    }
}

/// The task a campaign call carries (`{"task": {type, prompt, context}, "campaign_id", …}`):
/// the campaign's task with the contact's name, number and import columns merged into its
/// `context` (the contact's values win), as text, for the agent's instructions template.
pub fn call_task(campaign: &CampaignRecord, contact: &ContactRecord) -> serde_json::Value {
    use serde_json::Value;
    let mut task = match &campaign.task {
        Some(Value::Object(m)) => m.clone(),
        _ => serde_json::Map::new(),
    };
    let mut context = match task.remove("context") {
        Some(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    if let Some(name) = &contact.name {
        context.insert("name".into(), Value::String(name.clone()));
    }
    context.insert("phone".into(), Value::String(contact.phone.clone()));
    if let Value::Object(fields) = &contact.context {
        for (k, v) in fields {
            let text = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            context.insert(k.clone(), Value::String(text));
        }
    }
    task.insert("context".into(), Value::Object(context));
    serde_json::json!({
        "task": Value::Object(task),
        "campaign_id": campaign.id,
        "contact_id": contact.id,
    })
}

fn prepare_contacts(
    campaign_id: &str,
    contacts: &[NewContact],
    _now_ms: i64,
) -> Result<Vec<(String, NewContact, String)>, StoreError> {
    let mut seen = HashSet::new();
    contacts
        .iter()
        .map(|c| {
            if !seen.insert(c.phone.as_str()) {
                return Err(StoreError::Conflict(format!(
                    "{} appears twice in campaign {campaign_id}",
                    c.phone
                )));
            }
            Ok((
                uuid::Uuid::now_v7().to_string(),
                c.clone(),
                to_json_text(&c.context)?,
            ))
        })
        .collect()
}

fn conflict_or(e: sqlx::Error, what: &str) -> StoreError {
    if is_unique_violation(&e) {
        StoreError::Conflict(what.to_owned())
    } else {
        StoreError::Database(e)
    }
}

/// Whether a contact state is final.
pub fn is_final_contact_state(state: &str) -> bool {
    FINAL_CONTACT_STATES.contains(&state)
}
