-- Named queries of the SQLite store. `-- name: x` starts query x; asyncbatch.store.sql loads them.
-- Shard changes name the lease they are made under (lease_owner and lease_token: the fencing token).

-- name: insert_job
INSERT INTO jobs (id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata,
                  status, cancel_requested, created_at, updated_at, routes, owner, idempotency_key, content_hash)
VALUES (:id, :provider, :base_url, :provider_options, :endpoint, :completion_window, :max_attempts, :metadata,
        :status, 0, :created_at, :updated_at, :routes, :owner, :idempotency_key, :content_hash);

-- name: complete_job
-- What is known once every request went through validation: the routes they use, the digest of them all.
UPDATE jobs SET routes = ?, content_hash = ? WHERE id = ?;

-- name: insert_request
INSERT INTO requests (job_id, custom_id, route, url, model, body, size) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (job_id, custom_id) DO NOTHING;

-- name: get_job
SELECT id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata, status,
       cancel_requested, created_at, updated_at, routes, owner, idempotency_key, content_hash
FROM jobs WHERE id = ?;

-- name: list_jobs
-- ?1: an owner to keep only its jobs (NULL: every job); ?2: 1 to keep only unfinished jobs.
SELECT id, provider, base_url, provider_options, endpoint, completion_window, max_attempts, metadata, status,
       cancel_requested, created_at, updated_at, routes, owner, idempotency_key, content_hash
FROM jobs
WHERE (?1 IS NULL OR owner = ?1) AND (?2 = 0 OR status IN ('open', 'running'))
ORDER BY created_at, id;

-- name: unfinished_job_ids
SELECT id FROM jobs WHERE status IN ('open', 'running') ORDER BY created_at, id;

-- name: job_by_idempotency_key
SELECT id FROM jobs WHERE COALESCE(owner, '') = COALESCE(?1, '') AND idempotency_key = ?2;

-- name: job_by_content_hash
-- The first job submitted with these requests.
SELECT id FROM jobs WHERE content_hash = ?2 AND COALESCE(owner, '') = COALESCE(?1, '')
ORDER BY created_at, id LIMIT 1;

-- name: job_by_batch_id
SELECT j.id FROM shards s JOIN jobs j ON j.id = s.job_id
WHERE s.batch_id = ?2 AND COALESCE(j.owner, '') = COALESCE(?1, '');

-- name: job_count
SELECT count(*) FROM jobs;

-- name: job_exists
SELECT 1 FROM jobs WHERE id = ?;

-- name: set_routes
UPDATE jobs SET routes = ?, updated_at = ? WHERE id = ?;

-- name: count_states
-- pending, in_flight, failed, cancelled, total: each from its own (partial) index, never the table.
SELECT
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'pending'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'in_flight'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'failed'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'cancelled'),
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1);

-- name: set_job_status
UPDATE jobs SET status = ?, updated_at = ? WHERE id = ? AND status != ?;

-- name: request_cancel
UPDATE jobs SET cancel_requested = 1, updated_at = ? WHERE id = ?;

-- name: cancel_pending
UPDATE requests SET state = 'cancelled', error_code = 'cancelled', error_message = 'cancelled by the user'
WHERE job_id = ? AND state = 'pending';

-- name: pending_for_planning
SELECT rid, custom_id, route, url, model, size, attempts FROM requests
WHERE job_id = ? AND state = 'pending' ORDER BY route, url, model, rid LIMIT ?;

-- name: insert_shard
INSERT INTO shards (job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, created_at)
VALUES (?, 1, ?, 'planned', ?, ?, ?, 0, 0, ?);

-- name: size_shard
UPDATE shards SET attempt = ?, request_count = ?, bytes = ? WHERE id = ?;

-- name: insert_member
INSERT INTO shard_members (shard_id, wire_id, rid, attempt) VALUES (?, ?, ?, ?);

-- name: assign_requests
-- ?2: a JSON array of rids. One statement per page: no per-row binding, which cost twice the update itself.
UPDATE requests SET state = 'in_flight', shard_id = ?1, attempts = attempts + 1
WHERE rid IN (SELECT value FROM json_each(?2)) AND state = 'pending';

-- name: lease_holders
SELECT DISTINCT lease_owner FROM shards
WHERE job_id = ? AND phase NOT IN ('ingested', 'abandoned') AND lease_owner IS NOT NULL AND lease_expires >= ?;

-- name: claim_shards
-- Live shards of the job that nobody holds, whose lease lapsed, or whose holder the engine found dead (?5: a JSON
-- array of owners). Never the owner's own: its tasks drive those, and its lease keeper renews them.
UPDATE shards SET lease_owner = ?1, lease_expires = ?2, lease_token = lease_token + 1
WHERE job_id = ?3 AND phase NOT IN ('ingested', 'abandoned')
  AND (lease_owner IS NULL
       OR (lease_owner != ?1 AND (lease_expires < ?4 OR lease_owner IN (SELECT value FROM json_each(?5)))))
RETURNING id, lease_token;

-- name: renew_lease
UPDATE shards SET lease_expires = ? WHERE id = ? AND lease_owner = ? AND lease_token = ?;

-- name: renew_leases
UPDATE shards SET lease_expires = ? WHERE lease_owner = ? AND phase NOT IN ('ingested', 'abandoned');

-- name: release_lease
UPDATE shards SET lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ? AND lease_token = ?;

-- name: get_shard
SELECT id, job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at,
       provider_created_at, results_expire_at, last_error
FROM shards WHERE id = ?;

-- name: job_shards
SELECT id, job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at,
       provider_created_at, results_expire_at, last_error
FROM shards WHERE job_id = ? ORDER BY id;

-- name: last_failed_with
-- The newest shard of the job whose batch failed, or that the provider refused, with one of the error codes of
-- a JSON array.
SELECT id, job_id, attempt, token, phase, route, endpoint, model, request_count, bytes, file_id, batch_id,
       batch_status, output_file_id, error_file_id, provider_counts, errors, created_at, creating_at, ended_at,
       provider_created_at, results_expire_at, last_error
FROM shards
WHERE job_id = ? AND (batch_status = 'failed' OR phase = 'abandoned')
  AND EXISTS (SELECT 1 FROM json_each(shards.errors) e WHERE json_extract(e.value, '$.code') IN
              (SELECT value FROM json_each(?)))
ORDER BY id DESC LIMIT 1;

-- name: spool_rows
SELECT m.wire_id, r.url, r.body FROM shard_members m JOIN requests r ON r.rid = m.rid
WHERE m.shard_id = ? AND m.wire_id > ? ORDER BY m.wire_id LIMIT ?;

-- name: shard_uploaded
UPDATE shards SET phase = 'uploaded', file_id = ?, last_error = NULL
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase = 'planned';

-- name: shard_creating
UPDATE shards SET phase = 'creating', creating_at = ?
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase = 'uploaded';

-- name: shard_reupload
UPDATE shards SET phase = 'planned', file_id = NULL, last_error = ?
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase IN ('uploaded', 'creating');

-- name: shard_submitted
UPDATE shards SET phase = 'submitted', batch_id = ?, batch_status = ?, provider_counts = ?, errors = ?,
                  provider_created_at = ?, last_error = NULL
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase = 'creating';

-- name: shard_rebind
UPDATE shards SET batch_id = ?, batch_status = ?, provider_counts = ?, errors = ?, provider_created_at = ?
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase = 'submitted';

-- name: recorded_batch_ids
SELECT batch_id FROM shards WHERE batch_id IS NOT NULL AND created_at >= ?;

-- name: shard_polled
UPDATE shards SET batch_status = ?, provider_counts = ?, errors = ?, output_file_id = ?, error_file_id = ?,
                  last_error = NULL
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase = 'submitted';

-- name: shard_ended
UPDATE shards SET phase = 'ended', ended_at = ?
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase = 'submitted';

-- name: shard_note
UPDATE shards SET last_error = ? WHERE id = ? AND lease_owner = ? AND lease_token = ?;

-- name: shard_ingested
UPDATE shards SET phase = 'ingested', lease_owner = NULL, lease_expires = NULL, last_error = NULL
WHERE id = ? AND lease_owner = ? AND lease_token = ? AND phase = 'ended';

-- name: shard_abandoned
-- ?3, ?4: the lease it is abandoned under; NULL for a job's cancel, which only abandons shards not yet created.
UPDATE shards SET phase = 'abandoned', errors = ?1, lease_owner = NULL, lease_expires = NULL
WHERE id = ?2 AND phase NOT IN ('ingested', 'abandoned')
  AND ((?3 IS NULL AND phase IN ('planned', 'uploaded')) OR (lease_owner = ?3 AND lease_token = ?4));

-- name: member_requests
SELECT wire_id, rid, attempt FROM shard_members WHERE shard_id = ?;

-- name: member_requests_of
SELECT wire_id, rid, attempt FROM shard_members
WHERE shard_id = ? AND wire_id IN (SELECT value FROM json_each(?));

-- name: upsert_result
-- Parameters: a ResultRow's fields in order (?1 rid .. ?14 line_id; ?4, the request state, is for
-- settle_request), then ?15 the shard id.
INSERT INTO results (rid, attempt, shard_id, outcome, status_code, body, error_code, error_message,
                     input_tokens, output_tokens, cached_tokens, model, request_id, line_id)
VALUES (?1, ?2, ?15, ?3, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)
ON CONFLICT (rid, attempt) DO UPDATE SET
    shard_id = excluded.shard_id, outcome = excluded.outcome, status_code = excluded.status_code,
    body = excluded.body, error_code = excluded.error_code, error_message = excluded.error_message,
    input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens,
    cached_tokens = excluded.cached_tokens, model = excluded.model, request_id = excluded.request_id,
    line_id = excluded.line_id;

-- name: settle_request
-- The same parameters as upsert_result; a request that succeeded keeps no error.
UPDATE requests SET state = ?4, error_code = iif(?4 = 'succeeded', NULL, ?7),
                    error_message = iif(?4 = 'succeeded', NULL, ?8)
WHERE rid = ?1 AND shard_id = ?15 AND state = 'in_flight';

-- name: settle_succeeded
-- Most results succeed: they are settled in one statement per shard (?1: a JSON array of rids, in order),
-- the rest one by one through settle_request.
UPDATE requests SET state = 'succeeded', error_code = NULL, error_message = NULL
WHERE rid IN (SELECT value FROM json_each(?1)) AND shard_id = ?2 AND state = 'in_flight';

-- name: shard_tally
SELECT
  COALESCE(SUM(r.attempts = m.attempt AND r.state = 'succeeded'), 0),
  COALESCE(SUM(r.attempts = m.attempt AND r.state IN ('failed', 'cancelled')), 0),
  COALESCE(SUM(r.attempts > m.attempt OR r.state IN ('pending', 'in_flight')), 0)
FROM shard_members m JOIN requests r ON r.rid = m.rid WHERE m.shard_id = ?;

-- name: upsert_orphan
INSERT OR REPLACE INTO orphan_results (shard_id, wire_id, line) VALUES (?, ?, ?);

-- name: cancel_shard_members
-- Members are found through shard_members (its primary key), not by a scan of every request in the store.
UPDATE requests SET state = ?, error_code = ?, error_message = ?
WHERE rid IN (SELECT rid FROM shard_members WHERE shard_id = ?4) AND shard_id = ?4 AND state = 'in_flight';

-- name: refund_shard_members
-- A try that does not count (the provider's queue was full, nothing ran): the attempt is given back.
UPDATE requests SET state = 'pending', attempts = attempts - 1, error_code = ?, error_message = ?
WHERE rid IN (SELECT rid FROM shard_members WHERE shard_id = ?3) AND shard_id = ?3 AND state = 'in_flight';

-- name: requeue_shard_members
UPDATE requests SET state = CASE WHEN attempts < ? THEN 'pending' ELSE 'failed' END,
                    error_code = ?, error_message = ?
WHERE rid IN (SELECT rid FROM shard_members WHERE shard_id = ?4) AND shard_id = ?4 AND state = 'in_flight';

-- name: live_work
SELECT
  (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'pending')
    + (SELECT COUNT(*) FROM requests WHERE job_id = ?1 AND state = 'in_flight'),
  (SELECT COUNT(*) FROM shards WHERE job_id = ?2 AND phase NOT IN ('ingested', 'abandoned'));

-- name: final_results
-- `+r.state`: walk requests_job in rid order (a page costs its own rows), not requests_pending + a sort.
SELECT r.rid, r.custom_id, r.state, r.attempts, r.error_code, r.error_message,
       s.outcome, s.status_code, s.body, s.error_code, s.error_message, s.input_tokens, s.output_tokens,
       s.cached_tokens, s.model, s.request_id, s.line_id, sh.batch_id, r.route
FROM requests r
LEFT JOIN results s ON s.rid = r.rid AND s.attempt = r.attempts
LEFT JOIN shards sh ON sh.id = s.shard_id
WHERE r.job_id = ? AND +r.state IN ('succeeded', 'failed', 'cancelled') AND r.rid > ? AND r.consumed <= ?
ORDER BY r.rid LIMIT ?;

-- name: all_attempt_results
SELECT r.rid, r.custom_id, r.state, s.attempt, r.error_code, r.error_message,
       s.outcome, s.status_code, s.body, s.error_code, s.error_message, s.input_tokens, s.output_tokens,
       s.cached_tokens, s.model, s.request_id, s.line_id, sh.batch_id, r.route
FROM requests r
JOIN results s ON s.rid = r.rid
LEFT JOIN shards sh ON sh.id = s.shard_id
WHERE r.job_id = ? AND (r.rid, s.attempt) > (?, ?)
ORDER BY r.rid, s.attempt LIMIT ?;

-- name: orphans
SELECT o.shard_id, o.wire_id, o.line FROM orphan_results o JOIN shards s ON s.id = o.shard_id
WHERE s.job_id = ? ORDER BY o.shard_id, o.wire_id;

-- name: acknowledge
UPDATE requests SET consumed = 1 WHERE job_id = ? AND custom_id = ?;

-- name: audit_requests
SELECT custom_id, state, attempts FROM requests WHERE job_id = ?;

-- name: audit_wire_ids
SELECT r.custom_id, m.wire_id FROM shard_members m JOIN requests r ON r.rid = m.rid WHERE r.job_id = ?;

-- name: audit_successes
SELECT r.custom_id, s.attempt FROM results s JOIN requests r ON r.rid = s.rid
WHERE r.job_id = ? AND s.outcome = 'succeeded';

-- name: audit_tokens
SELECT token FROM shards WHERE job_id = ?;

-- name: stats_jobs
SELECT status, COUNT(*) FROM jobs GROUP BY status;

-- name: stats_shards
SELECT phase, COUNT(*) FROM shards GROUP BY phase;

-- name: stats_batches
SELECT batch_status, COUNT(*) FROM shards WHERE phase IN ('submitted', 'ended') AND batch_status IS NOT NULL
GROUP BY batch_status;

-- name: stats_requests
-- pending, in_flight, failed, cancelled from their partial indexes, then every request.
SELECT
  (SELECT COUNT(*) FROM requests WHERE state = 'pending'),
  (SELECT COUNT(*) FROM requests WHERE state = 'in_flight'),
  (SELECT COUNT(*) FROM requests WHERE state = 'failed'),
  (SELECT COUNT(*) FROM requests WHERE state = 'cancelled'),
  (SELECT COUNT(*) FROM requests);
