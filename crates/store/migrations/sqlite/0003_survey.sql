-- Answers the agent recorded with the record_survey_response tool, per call.
CREATE TABLE survey_responses (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id  TEXT NOT NULL REFERENCES calls (id) ON DELETE CASCADE,
    question TEXT NOT NULL,
    answer   TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);

CREATE INDEX survey_responses_call_idx ON survey_responses (call_id, id);
