-- voxbridge store, PostgreSQL dialect. All timestamps are Unix milliseconds (BIGINT).
-- JSON columns are TEXT written and read by serde_json (same as on SQLite).
-- Every integer column is BIGINT so that it decodes as i64 on both backends.

CREATE TABLE calls (
    id                   TEXT PRIMARY KEY,
    direction            TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    from_number          TEXT NOT NULL,
    to_number            TEXT NOT NULL,
    agent                TEXT NOT NULL,
    task                 TEXT,
    status               TEXT NOT NULL,
    status_history       TEXT NOT NULL DEFAULT '[]',
    twilio_call_sid      TEXT UNIQUE,
    stream_sid           TEXT,
    answered_by          TEXT,
    end_reason           TEXT,
    created_at_ms        BIGINT NOT NULL,
    answered_at_ms       BIGINT,
    ended_at_ms          BIGINT,
    duration_s           BIGINT,
    input_tokens         BIGINT NOT NULL DEFAULT 0,
    output_tokens        BIGINT NOT NULL DEFAULT 0,
    cached_tokens        BIGINT NOT NULL DEFAULT 0,
    recording_sid        TEXT,
    recording_url        TEXT,
    recording_duration_s BIGINT,
    api_key_id           TEXT,
    idempotency_key      TEXT,
    -- next transcript sequence number handed out (see Store::add_transcript)
    transcript_seq       BIGINT NOT NULL DEFAULT 0,
    CONSTRAINT calls_idempotency_key UNIQUE (api_key_id, idempotency_key)
);

CREATE INDEX calls_created_at_idx ON calls (created_at_ms, id);
CREATE INDEX calls_status_idx ON calls (status);
CREATE INDEX calls_from_number_idx ON calls (from_number);
CREATE INDEX calls_to_number_idx ON calls (to_number);

CREATE TABLE transcript_items (
    id       BIGSERIAL PRIMARY KEY,
    call_id  TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    seq      BIGINT NOT NULL,
    speaker  TEXT NOT NULL CHECK (speaker IN ('caller', 'agent')),
    text     TEXT NOT NULL,
    start_ms BIGINT,
    end_ms   BIGINT,
    at_ms    BIGINT NOT NULL,
    UNIQUE (call_id, seq)
);

CREATE TABLE call_events (
    id      BIGSERIAL PRIMARY KEY,
    call_id TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    kind    TEXT NOT NULL,
    data    TEXT NOT NULL,
    at_ms   BIGINT NOT NULL
);

CREATE INDEX call_events_call_idx ON call_events (call_id, id);

CREATE TABLE tool_calls (
    id          BIGSERIAL PRIMARY KEY,
    call_id     TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    arguments   TEXT NOT NULL,
    result      TEXT NOT NULL,
    ok          BOOLEAN NOT NULL,
    duration_ms BIGINT NOT NULL,
    at_ms       BIGINT NOT NULL
);

CREATE INDEX tool_calls_call_idx ON tool_calls (call_id, id);

CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    prefix          TEXT NOT NULL,
    hash            TEXT NOT NULL UNIQUE,
    created_at_ms   BIGINT NOT NULL,
    revoked_at_ms   BIGINT,
    last_used_at_ms BIGINT
);

CREATE INDEX api_keys_prefix_idx ON api_keys (prefix);
