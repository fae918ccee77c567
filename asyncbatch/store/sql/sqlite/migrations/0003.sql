-- Schema 2 -> 3: the batch gateway's tables (see schema.sql for what each holds); nothing else changes.


-- A virtual key is stored as the SHA-256 of the key (`token`), never in clear. `owner` is the tenant every
-- object it makes belongs to: 'team:<team_id>', or 'key:<token>' for a key without a team.
CREATE TABLE IF NOT EXISTS gateway_keys (
    token       TEXT PRIMARY KEY,
    owner       TEXT NOT NULL,
    team_id     TEXT,
    models      TEXT NOT NULL DEFAULT '[]',     -- JSON array of model names (empty: every model of the config)
    max_budget  REAL,                           -- USD; NULL: no budget
    metadata    TEXT NOT NULL DEFAULT '{}',     -- JSON object, as the admin gave it
    created_at  REAL NOT NULL
);

-- Uploaded files and the output and error files of batches. `seq` orders listings (newest first) and pages
-- them after a client's id. An upload is `uploading` until its last chunk is in: invisible until then.
CREATE TABLE IF NOT EXISTS gateway_files (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,           -- file-...: minted by the gateway, carries nothing
    owner       TEXT NOT NULL,
    purpose     TEXT NOT NULL,                  -- batch (an upload), batch_output (a batch's output or errors)
    filename    TEXT NOT NULL,
    bytes       INTEGER NOT NULL DEFAULT 0,
    lines       INTEGER NOT NULL DEFAULT 0,
    status      TEXT NOT NULL,                  -- uploading | processed
    created_at  REAL NOT NULL,
    batch_id    TEXT,                           -- an output or error file: the batch whose results it holds
    kind        TEXT NOT NULL DEFAULT 'upload'  -- upload | output | error
);
CREATE INDEX IF NOT EXISTS gateway_files_owner ON gateway_files (owner, seq);

-- An upload's content, in order: stored in the store so that every gateway process can serve it.
CREATE TABLE IF NOT EXISTS gateway_file_chunks (
    file_id TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (file_id, seq)
);

-- A client's batch: the job that runs it (`job_id`, minted with the batch), or the errors that failed it.
CREATE TABLE IF NOT EXISTS gateway_batches (
    seq               INTEGER PRIMARY KEY AUTOINCREMENT,
    id                TEXT NOT NULL UNIQUE,     -- batch_...: minted by the gateway, carries nothing
    owner             TEXT NOT NULL,
    key_token         TEXT NOT NULL,            -- the key that created it: its spend counts against that key
    input_file_id     TEXT NOT NULL,
    endpoint          TEXT NOT NULL,            -- as the client declared it (lines may mix endpoints)
    completion_window TEXT NOT NULL,
    metadata          TEXT,                     -- JSON object of strings, or NULL
    job_id            TEXT NOT NULL UNIQUE,
    status            TEXT NOT NULL,            -- validating | submitted | failed | completed | expired | cancelled
    errors            TEXT NOT NULL DEFAULT '[]',  -- JSON: OpenAI errors.data items
    created_at        REAL NOT NULL,
    cancelling_at     REAL,
    ended_at          REAL,
    output_file_id    TEXT,
    error_file_id     TEXT,
    total             INTEGER NOT NULL DEFAULT 0,  -- request counts, fixed when the batch ends
    completed         INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS gateway_batches_owner ON gateway_batches (owner, seq);

-- Batch prices per route (a config model_name), USD per token, written by the gateway from genai-prices.
CREATE TABLE IF NOT EXISTS gateway_prices (
    route        TEXT PRIMARY KEY,
    input        REAL NOT NULL,
    cached_input REAL NOT NULL,
    output       REAL NOT NULL
);

-- Usage and cost of every billed result of a gateway batch, booked by `ingest` in the transaction that
-- stores the result (book_spend in gateway.sql): a crash cannot ingest a result without booking it, nor book it
-- twice. Successes are what providers bill.
CREATE TABLE IF NOT EXISTS gateway_spend (
    rid           INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    batch_id      TEXT NOT NULL,
    key_token     TEXT NOT NULL,
    input_tokens  INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cost          REAL,                         -- NULL: the route has no price
    PRIMARY KEY (rid, attempt)
);
CREATE INDEX IF NOT EXISTS gateway_spend_key ON gateway_spend (key_token);
CREATE INDEX IF NOT EXISTS gateway_spend_batch ON gateway_spend (batch_id);

