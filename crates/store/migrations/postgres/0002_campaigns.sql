-- Campaigns: a durable outbound call queue. The contacts table is the queue itself (one row
-- per person to call, with the instant it is next due); attempts are the calls placed (or
-- about to be placed) for a contact. Times are Unix milliseconds (BIGINT), as in 0001.

CREATE TABLE campaigns (
    id                TEXT PRIMARY KEY NOT NULL,
    name              TEXT NOT NULL,
    agent             TEXT NOT NULL,
    -- JSON: the task given to the agent ({"prompt": …}); contact context is merged per call
    task              TEXT,
    from_number       TEXT NOT NULL,
    -- JSON: voxbridge_compliance::Policy
    policy            TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'paused', 'canceled', 'completed')),
    status_reason     TEXT,
    max_concurrent    BIGINT NOT NULL,
    calls_per_minute  BIGINT NOT NULL,
    -- pacing: the earliest instant the next call of this campaign may be dialed
    next_dial_at_ms   BIGINT NOT NULL DEFAULT 0,
    -- circuit breaker: pause when this share of recent finished attempts failed
    failure_threshold DOUBLE PRECISION NOT NULL,
    api_key_id        TEXT,
    created_at_ms     BIGINT NOT NULL,
    updated_at_ms     BIGINT NOT NULL
);

CREATE TABLE contacts (
    id                  TEXT PRIMARY KEY NOT NULL,
    campaign_id         TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    -- the row of the import (CSV line or JSON index), for reports
    row_number          BIGINT NOT NULL,
    phone               TEXT NOT NULL,
    name                TEXT,
    timezone            TEXT,
    consent             BOOLEAN NOT NULL,
    context             TEXT NOT NULL DEFAULT '{}',
    state               TEXT NOT NULL CHECK (state IN ('pending', 'deferred', 'dialing', 'in_call',
                            'completed', 'failed', 'opted_out', 'refused', 'canceled')),
    next_run_at_ms      BIGINT NOT NULL,
    -- calls placed for this contact in this campaign (attempts not placed are not counted)
    attempts            BIGINT NOT NULL DEFAULT 0,
    first_attempt_at_ms BIGINT,
    last_outcome        TEXT,
    reason_code         TEXT,
    reason              TEXT,
    updated_at_ms       BIGINT NOT NULL,
    UNIQUE (campaign_id, phone)
);

CREATE INDEX contacts_due_idx ON contacts (campaign_id, state, next_run_at_ms);

CREATE TABLE attempts (
    id             TEXT PRIMARY KEY NOT NULL,
    contact_id     TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    campaign_id    TEXT NOT NULL,
    phone          TEXT NOT NULL,
    -- 1, 2, …: an attempt row is dialed at most once; (contact, seq) is unique
    seq            BIGINT NOT NULL,
    call_id        TEXT NOT NULL REFERENCES calls (id),
    state          TEXT NOT NULL CHECK (state IN ('dialing', 'in_call', 'done', 'not_placed')),
    twilio_call_sid TEXT,
    outcome        TEXT,
    detail         TEXT,
    -- the node that dials (or reconciles) it, and until when that node owns it
    node           TEXT NOT NULL,
    lease_until_ms BIGINT NOT NULL,
    started_at_ms  BIGINT NOT NULL,
    ended_at_ms    BIGINT,
    UNIQUE (contact_id, seq)
);

-- never two live calls to one number, whatever the campaign
CREATE UNIQUE INDEX attempts_live_phone_idx ON attempts (phone) WHERE state IN ('dialing', 'in_call');
CREATE INDEX attempts_phone_idx ON attempts (phone, started_at_ms);
CREATE INDEX attempts_call_idx ON attempts (call_id);
CREATE INDEX attempts_campaign_idx ON attempts (campaign_id, state);

-- every deferral, refusal, dial and outcome of a contact, with its reason
CREATE TABLE contact_log (
    id         BIGSERIAL PRIMARY KEY,
    contact_id TEXT NOT NULL REFERENCES contacts (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL,
    code       TEXT,
    message    TEXT NOT NULL,
    at_ms      BIGINT NOT NULL
);

CREATE INDEX contact_log_contact_idx ON contact_log (contact_id, id);

CREATE TABLE do_not_call (
    phone       TEXT PRIMARY KEY NOT NULL,
    reason      TEXT,
    source      TEXT NOT NULL,
    added_at_ms BIGINT NOT NULL
);
