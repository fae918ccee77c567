-- Schema 1 as asyncbatch 0.1 wrote it: the starting point of the upgrade test (tests/store/test_sqlite.py).
-- asyncbatch job store, schema version 1 (PRAGMA user_version).
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
    updated_at        REAL NOT NULL
);

-- One row per custom_id. The body is kept so that a resubmission after a restart needs no input file.
CREATE TABLE IF NOT EXISTS requests (
    rid           INTEGER PRIMARY KEY,
    job_id        TEXT NOT NULL REFERENCES jobs(id),
    custom_id     TEXT NOT NULL,
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
CREATE INDEX IF NOT EXISTS requests_pending ON requests (job_id, state, url, model) WHERE state = 'pending';
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
    lease_expires   REAL
);
CREATE INDEX IF NOT EXISTS shards_live ON shards (job_id, phase);
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
