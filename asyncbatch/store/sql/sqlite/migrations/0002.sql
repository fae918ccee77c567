-- Schema 1 -> 2: one job may span providers (routes), gateway tenants and idempotent submits, fencing tokens on
-- leases, and what the provider's clock says about a batch. Rows written by schema 1 keep route '' (the job's
-- default provider), so no request is rewritten.
ALTER TABLE jobs ADD COLUMN routes TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN idempotency_key TEXT;
ALTER TABLE jobs ADD COLUMN content_hash TEXT;
CREATE UNIQUE INDEX jobs_idempotency ON jobs (COALESCE(owner, ''), idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_content ON jobs (content_hash) WHERE content_hash IS NOT NULL;
CREATE INDEX jobs_unfinished ON jobs (status) WHERE status IN ('open', 'running');
ALTER TABLE requests ADD COLUMN route TEXT NOT NULL DEFAULT '';
DROP INDEX requests_pending;
CREATE INDEX requests_pending ON requests (job_id, state, route, url, model) WHERE state = 'pending';
ALTER TABLE shards ADD COLUMN route TEXT NOT NULL DEFAULT '';
ALTER TABLE shards ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
ALTER TABLE shards ADD COLUMN provider_created_at REAL;
ALTER TABLE shards ADD COLUMN results_expire_at REAL;
ALTER TABLE shards ADD COLUMN last_error TEXT;
CREATE INDEX shards_owner ON shards (lease_owner) WHERE lease_owner IS NOT NULL;
