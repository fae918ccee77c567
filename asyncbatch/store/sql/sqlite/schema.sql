-- asyncbatch job store on SQLite: the whole schema of the newest version (PRAGMA user_version). A new store is
-- made from this file; an older one is brought here by the files of migrations/, in order.
-- Every state change is one short transaction; see design.md, "Invariants that make resume safe".

CREATE TABLE IF NOT EXISTS jobs (
    id                TEXT PRIMARY KEY,
    provider          TEXT NOT NULL,             -- provider name ("openai", "anthropic", ...); never a key
    base_url          TEXT,
    provider_options  TEXT NOT NULL DEFAULT '{}',  -- JSON: what rebuilds the same provider (never a key)
    endpoint          TEXT NOT NULL,             -- the job's endpoint, or "*" for mixed endpoints
    completion_window TEXT NOT NULL,
    max_attempts      INTEGER NOT NULL,
    metadata          TEXT NOT NULL,             -- JSON object of strings
    status            TEXT NOT NULL,             -- JobStatus
    cancel_requested  INTEGER NOT NULL DEFAULT 0,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    routes            TEXT NOT NULL DEFAULT '{}',  -- JSON: route name -> ProviderSpec (never a key)
    owner             TEXT,                      -- a gateway tenant; NULL for the library and the CLI
    idempotency_key   TEXT,                      -- a retried submit with the same key returns this job
    content_hash      TEXT                       -- digest of the validated requests (tells a retry from a new job)
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs (COALESCE(owner, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_content ON jobs (content_hash) WHERE content_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (status) WHERE status IN ('open', 'running');

-- One row per custom_id. The body is kept so that a resubmission after a restart needs no input file.
CREATE TABLE IF NOT EXISTS requests (
    rid           INTEGER PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    custom_id     TEXT NOT NULL,
    route         TEXT NOT NULL DEFAULT '',      -- which provider of the job runs it ('': the job's default)
    url           TEXT NOT NULL,
    model         TEXT,
    body          BLOB NOT NULL,
    size          INTEGER NOT NULL,              -- encoded bytes, for sharding under the byte limit
    state         TEXT NOT NULL DEFAULT 'pending',
    attempts      INTEGER NOT NULL DEFAULT 0,    -- shards this request has been placed in
    shard_id      INTEGER,                       -- its current (or last) shard
    error_code    TEXT,
    error_message TEXT,
    consumed      INTEGER NOT NULL DEFAULT 0,    -- acknowledged by a consumer (exactly-once consumption)
    UNIQUE (job_id, custom_id)
);
-- One partial index per state but `succeeded`: settling a request that succeeded (most do) only drops its
-- requests_in_flight entry, and counts read small indexes (succeeded = all the job's requests - the rest).
-- `state` is in each key so that the query planner prefers them to requests_job.
CREATE INDEX IF NOT EXISTS requests_pending ON requests (job_id, state, route, url, model) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS requests_in_flight ON requests (job_id, state) WHERE state = 'in_flight';
CREATE INDEX IF NOT EXISTS requests_failed ON requests (job_id, state) WHERE state = 'failed';
CREATE INDEX IF NOT EXISTS requests_cancelled ON requests (job_id, state) WHERE state = 'cancelled';
-- A job's requests in rid (input) order: results are paged by rid without sorting the job each page.
CREATE INDEX IF NOT EXISTS requests_job ON requests (job_id);

-- One row per attempt at one provider batch.
CREATE TABLE IF NOT EXISTS shards (
    id              INTEGER PRIMARY KEY,
    job_id          TEXT NOT NULL REFERENCES jobs(id),
    attempt         INTEGER NOT NULL,            -- highest attempt number among its members
    token           TEXT NOT NULL UNIQUE,        -- client token, travels with the provider batch
    phase           TEXT NOT NULL,               -- ShardPhase
    endpoint        TEXT NOT NULL,
    model           TEXT,
    request_count   INTEGER NOT NULL,
    bytes           INTEGER NOT NULL,
    file_id         TEXT,
    batch_id        TEXT,
    batch_status    TEXT,
    output_file_id  TEXT,
    error_file_id   TEXT,
    provider_counts TEXT NOT NULL DEFAULT '{}',
    errors          TEXT NOT NULL DEFAULT '[]',
    created_at      REAL NOT NULL,
    creating_at     REAL,
    ended_at        REAL,
    lease_owner     TEXT,
    lease_expires   REAL,
    route           TEXT NOT NULL DEFAULT '',    -- the job's provider route that runs it
    lease_token     INTEGER NOT NULL DEFAULT 0,  -- fencing: every claim is a new token, every change checks it
    provider_created_at REAL,                    -- the batch's creation time by the provider's clock
    results_expire_at   REAL,                    -- when the provider drops the results (provider's clock)
    last_error      TEXT                         -- the last failure of a step, while the shard waits to retry
);
CREATE INDEX IF NOT EXISTS shards_live ON shards (job_id, phase);
CREATE INDEX IF NOT EXISTS shards_owner ON shards (lease_owner) WHERE lease_owner IS NOT NULL;
-- One provider batch belongs to one shard: a second adoption of the same batch fails instead.
CREATE UNIQUE INDEX IF NOT EXISTS shards_batch_id ON shards (batch_id) WHERE batch_id IS NOT NULL;

-- Membership of a shard, committed before its file is built (invariant 2). wire_id is the custom_id
-- as the provider sees it.
CREATE TABLE IF NOT EXISTS shard_members (
    shard_id INTEGER NOT NULL,
    wire_id  TEXT NOT NULL,
    rid      INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,                -- the request's attempt number in this shard
    PRIMARY KEY (shard_id, wire_id)
) WITHOUT ROWID;

-- One row per (request, attempt): upserted, so re-ingesting after a crash is harmless (invariant 4).
CREATE TABLE IF NOT EXISTS results (
    rid           INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    shard_id      INTEGER NOT NULL,
    outcome       TEXT NOT NULL,                 -- Outcome
    status_code   INTEGER,
    body          BLOB,                          -- native response body, raw JSON
    error_code    TEXT,
    error_message TEXT,
    input_tokens  INTEGER,
    output_tokens INTEGER,
    cached_tokens INTEGER,
    model         TEXT,
    request_id    TEXT,
    line_id       TEXT,
    PRIMARY KEY (rid, attempt)
);

-- Result lines whose custom_id the shard does not know: kept and reported, never dropped.
CREATE TABLE IF NOT EXISTS orphan_results (
    shard_id INTEGER NOT NULL,
    wire_id  TEXT NOT NULL,
    line     BLOB NOT NULL,
    PRIMARY KEY (shard_id, wire_id)
);

-- The batch gateway (`asyncbatch proxy`): virtual keys, files with their content in chunks, client batches
-- (each backed by one job), prices and the spend booked per request. Every gateway process serves from these
-- tables alone, so that several of them on one (PostgreSQL) store answer alike.

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

