-- Schema 1 -> 2: results are keyed by id = rid << 16 | attempt instead of a (rid, attempt) primary key.
-- Runs in the transaction that then applies schema.sql and sets user_version.

CREATE TABLE results_v2 (
    id            INTEGER PRIMARY KEY,
    rid           INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    shard_id      INTEGER NOT NULL,
    outcome       TEXT NOT NULL,
    status_code   INTEGER,
    body          BLOB,
    error_code    TEXT,
    error_message TEXT,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    model         TEXT,
    request_id    TEXT,
    line_id       TEXT
);
INSERT INTO results_v2
SELECT (rid << 16) | attempt, rid, attempt, shard_id, outcome, status_code, body, error_code, error_message,
       input_tokens, output_tokens, cached_tokens, model, request_id, line_id
FROM results ORDER BY rid, attempt;
DROP TABLE results;
ALTER TABLE results_v2 RENAME TO results;
